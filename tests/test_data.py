"""Dataset folders in both layouts: the seeded pick, bad rows, fingerprints, image loading."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, JpegImagePlugin

from cnnlens import MAX_IMAGE_PIXELS, demo_dataset, load_dataset, open_image, to_mode
from cnnlens.images import MAX_DECODED_SIDE
from cnnlens.models import DEMO_DATASET_DIR
from tests.generated import write_dataset, write_image_folder


def original_recipe_pick(root: Path, seed: int) -> str:
    """The original recipe, verbatim in spirit: RandomState(seed).choice(train.filename)."""
    train = pd.read_csv(root / "train.csv")
    return np.random.RandomState(seed).choice(train.filename)


def test_demo_pick_for_seed_128_is_the_original_recipes_pick():
    dataset = demo_dataset()
    assert dataset.pick(128) == original_recipe_pick(DEMO_DATASET_DIR, 128)
    assert dataset.pick(128) == "3282.png"


@pytest.mark.parametrize("seed", [0, 1, 7, 128, 2024])
def test_pick_matches_the_recipe_for_any_seed(small_dataset, seed):
    assert load_dataset(small_dataset).pick(seed) == original_recipe_pick(small_dataset, seed)


def test_picks_in_any_order_on_any_thread_are_the_recipes_picks(small_dataset):
    from concurrent.futures import ThreadPoolExecutor

    dataset = load_dataset(small_dataset)
    seeds = [5, 0, 5, 2**32 - 1, 7, 0, 128] * 4
    expected = [original_recipe_pick(small_dataset, seed) for seed in seeds]
    with ThreadPoolExecutor(4) as pool:  # each thread reseeds its own generator
        assert list(pool.map(dataset.pick, seeds)) == expected
    assert [dataset.pick(seed) for seed in seeds] == expected
    demo = demo_dataset()
    test_names = pd.read_csv(DEMO_DATASET_DIR / "test.csv").filename
    assert demo.pick(128, "test") == np.random.RandomState(128).choice(test_names)
    assert demo.pick(128) == "3282.png"


def test_demo_dataset_layout():
    dataset = demo_dataset()
    assert len(dataset.index) == 4000 and dataset.problems == []
    assert len(dataset.test_index) == 1000 and list(dataset.test_index.columns) == ["filename"]
    assert dataset.labels == list(range(10))
    assert dataset.index["label"].value_counts().min() > 300


def test_a_left_out_pick_takes_the_next_draw_of_the_same_generator(small_dataset):
    first = original_recipe_pick(small_dataset, 128)
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


def old_pick_many(dataset, seed: int, n: int, split: str = "train", labels=None) -> list[str]:
    """pick_many as it was before it stopped walking every filename, and the Dataset
    page's label filter on top of it: the reference for the same picks."""
    rows = dataset.rows(split)
    if labels:
        allowed = set(rows.loc[rows["label"].isin(labels), "filename"])
        order = old_pick_many(dataset, seed, len(rows), split)
        return [name for name in order if name in allowed][:n]
    usable = list(rows["filename"])
    rng = np.random.RandomState(seed)
    if n >= len(usable) // 2:
        first = dataset.pick(seed, split) if usable and n else None
        rest = [name for name in rng.permutation(usable) if name != first]
        return ([first] if first else []) + rest[: max(n - 1, 0)]
    names = set(usable)
    drawn_from = dataset._drawn_from[split]  # the CSV's filename column as written
    chosen: dict[str, None] = {}
    while len(chosen) < n:
        name = rng.choice(drawn_from)
        if name in names:
            chosen[name] = None
    return list(chosen)


def test_pick_many_gives_the_same_picks_as_before_on_the_demo():
    dataset = demo_dataset()
    assert dataset.pick_many(128, 1) == ["3282.png"]
    for seed in (0, 7, 128, 4_000_000_000):
        for n in (0, 1, 24, 1999, 2000, 4000, 4100):
            assert dataset.pick_many(seed, n) == old_pick_many(dataset, seed, n), (seed, n)
        for labels in ([3], [0, 9], [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]):
            for n in (24, 500):
                expected = old_pick_many(dataset, seed, n, labels=labels)
                assert dataset.pick_many(seed, n, labels=labels) == expected, (seed, labels)
        assert dataset.pick_many(seed, 24, "test") == old_pick_many(dataset, seed, 24, "test")


def test_pick_many_gives_the_same_picks_as_before_with_left_out_rows(tmp_path):
    root = write_dataset(tmp_path / "gen", [i % 5 for i in range(300)])
    for i in (3, 40, 41, 250):
        (root / "train" / f"img_{i}.png").unlink()
    with open(root / "train.csv", "a") as csv:
        csv.write("img_7.png,2\n,1\n")
    dataset = load_dataset(root)
    assert len(dataset.index) == 296 and len(dataset.problems) == 6
    for seed in (1, 2, 3, 128):
        for n in (0, 10, 147, 148, 296, 400):
            assert dataset.pick_many(seed, n) == old_pick_many(dataset, seed, n), (seed, n)
        for labels in ([4], [1, 2], {0, 1, 2, 3, 4}, []):
            for n in (5, 24, 300):
                expected = old_pick_many(dataset, seed, n, labels=labels)
                assert dataset.pick_many(seed, n, labels=labels) == expected, (seed, labels, n)
    assert len(dataset.pick_many(5, 24, labels=[4])) == 24
    assert {dataset.label_of(name) for name in dataset.pick_many(5, 24, labels=[4])} == {4}
    assert dataset.pick_many(5, 24, labels=[99]) == []
    with pytest.raises(ValueError, match="n must be zero or more"):
        dataset.pick_many(5, -1)


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


def test_extra_columns_and_the_original_recipes_test_csv_name(tmp_path):
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


def test_rows_are_the_usable_rows_of_a_split_with_labels_or_none(tmp_path):
    root = write_dataset(tmp_path / "d", [3, 1, 4])
    (root / "train" / "img_1.png").write_bytes(b"not an image")
    (root / "test").mkdir()
    for name in ("t1.png", "t2.png"):
        Image.new("L", (8, 8), 9).save(root / "test" / name)
    (root / "test.csv").write_text("filename\nt2.png\ngone.png\nt1.png\n")
    dataset = load_dataset(root)
    train = dataset.rows("train")
    assert train["filename"].tolist() == ["img_0.png", "img_2.png"]
    assert train["label"].tolist() == [3, 4]
    test = dataset.rows("test")
    assert test["filename"].tolist() == ["t2.png", "t1.png"]
    assert test["label"].tolist() == [None, None]
    assert dataset.rows("test") is test  # made once
    assert list(dataset.test_index.columns) == ["filename"]
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        dataset.rows("val")
    with pytest.raises(ValueError, match="has no test CSV, so there are no test images"):
        load_dataset(write_dataset(tmp_path / "e", [0])).rows("test")


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


# The image-folder layout ---------------------------------------------------------------


def test_image_folders_index_like_a_csv_sorted_by_path(tmp_path):
    labels = ["cat", "dog", "cat", "bird", "dog", "cat", "bird", "cat"]
    root = write_image_folder(tmp_path / "pets", labels, size=(6, 9), mode="RGB")
    (root / "cat" / "extra").mkdir()
    Image.new("RGB", (9, 6), (1, 2, 3)).save(root / "cat" / "extra" / "deep.png")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\0")  # hidden files are not data
    (root / "README.txt").write_text("loose files beside the label folders are not data")
    dataset = load_dataset(root)
    expected = sorted([f"{label}/img_{i}.png" for i, label in enumerate(labels)])
    expected = sorted([*expected, "cat/extra/deep.png"])
    assert dataset.layout == "image-folder" and dataset.problems == []
    assert list(dataset.index["filename"]) == expected
    assert list(dataset.index["label"]) == [name.split("/")[0] for name in expected]
    assert dataset.labels == ["bird", "cat", "dog"]
    assert dataset.label_of("cat/extra/deep.png") == "cat"
    assert dataset.test_index is None
    with pytest.raises(ValueError, match="has no test/ folder"):
        dataset.pick(1, split="test")
    for seed in (0, 7, 128):
        assert dataset.pick(seed) == np.random.RandomState(seed).choice(expected)
    assert dataset.pick_many(3, 4)[0] == dataset.pick(3)
    image = dataset.load_image("cat/img_0.png", "RGB")
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(root / "cat" / "img_0.png")))
    assert np.asarray(dataset.load_image("cat/extra/deep.png", "RGB"))[0, 0].tolist() == [1, 2, 3]


def test_image_folders_under_train_with_a_flat_test_folder_and_problems(tmp_path):
    root = write_image_folder(tmp_path / "d", ["a", "b", "a", "b"], under_train=True)
    (root / "train" / "b" / "notes.png").write_text("not a picture")
    (root / "train" / "loose.png").write_bytes((root / "train" / "a" / "img_0.png").read_bytes())
    (root / "test").mkdir()
    for name, value in (("t2.png", 20), ("t1.png", 10)):
        Image.new("L", (4, 4), value).save(root / "test" / name)
    (root / "test" / "t3.png").write_text("plain text")
    dataset = load_dataset(root)
    assert list(dataset.index["filename"]) == [
        "a/img_0.png",
        "a/img_2.png",
        "b/img_1.png",
        "b/img_3.png",
    ]
    assert dataset.problems == [
        ("b/notes.png", "not an image Pillow can read"),
        ("loose.png", "not inside a label folder"),
    ]
    assert list(dataset.test_index["filename"]) == ["t1.png", "t2.png"]
    assert dataset.test_problems == [("t3.png", "not an image Pillow can read")]
    # Left-out files stay in the list the generator draws from, as left-out CSV rows do.
    rng = np.random.RandomState(5)
    draws = [rng.choice(["t1.png", "t2.png", "t3.png"]) for _ in range(50)]
    assert dataset.pick(5, split="test") == next(name for name in draws if name != "t3.png")
    assert np.asarray(dataset.load_image("t2.png", split="test")).max() == 20
    assert dataset.path_of("a/img_2.png") == root / "train" / "a" / "img_2.png"
    with pytest.raises(ValueError, match="not a usable image"):
        dataset.load_image("b/notes.png")


def test_integer_folder_names_are_integer_labels_like_in_a_csv(tmp_path):
    labels = [i % 3 for i in range(9)]
    as_folders = load_dataset(write_image_folder(tmp_path / "f", labels))
    as_csv = load_dataset(write_dataset(tmp_path / "c", labels))
    assert as_folders.labels == as_csv.labels == [0, 1, 2]
    assert as_folders.index["label"].tolist() == sorted(labels)
    # A zero-padded name is not the integer it spells: it stays a name.
    padded = load_dataset(write_image_folder(tmp_path / "p", ["007", "8"]))
    assert padded.labels == ["007", "8"]


def test_a_folder_in_neither_layout_says_which_layouts_work(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match=r"no label subfolders\. cnnlens reads two layouts"):
        load_dataset(tmp_path / "flat")
    (tmp_path / "no_csv" / "train").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "no_csv" / "train" / "a.png")
    with pytest.raises(ValueError, match="has no train.csv and train/ has no label subfolders"):
        load_dataset(tmp_path / "no_csv")
    with pytest.raises(ValueError, match="is not a folder.*reads two layouts"):
        load_dataset(tmp_path / "flat" / "a.png")
    # The folder that holds datasets (the default data root) is not itself a dataset.
    with pytest.raises(ValueError, match="holds datasets rather than label folders.*MNIST"):
        load_dataset(DEMO_DATASET_DIR.parent)


def test_the_fingerprint_changes_with_the_data_and_only_then(tmp_path):
    csv_root = write_dataset(tmp_path / "c", [0, 1, 2])
    folder_root = write_image_folder(tmp_path / "f", [0, 1, 2])
    first = load_dataset(csv_root).fingerprint
    assert first == load_dataset(csv_root).fingerprint and len(first) == 32
    assert load_dataset(folder_root).fingerprint not in (first, "")

    image = csv_root / "train" / "img_1.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = load_dataset(csv_root).fingerprint
    (csv_root / "train.csv").write_text("filename,label\nimg_0.png,0\nimg_1.png,1\nimg_2.png,1\n")
    relabelled = load_dataset(csv_root).fingerprint
    (csv_root / "train" / "img_2.png").unlink()
    missing = load_dataset(csv_root).fingerprint
    assert len({first, touched, relabelled, missing}) == 4

    before = load_dataset(folder_root).fingerprint
    Image.new("L", (8, 8)).save(folder_root / "1" / "new.png")
    assert load_dataset(folder_root).fingerprint != before


def test_an_index_that_does_not_open_the_images_keeps_every_existing_file(tmp_path):
    """check_images=False (the batch extractor) finds missing files, not broken ones."""
    root = write_dataset(tmp_path / "d", [0, 1, 2, 3])
    (root / "train" / "img_1.png").write_bytes(b"not an image")
    (root / "train" / "img_2.png").unlink()
    checked, unchecked = load_dataset(root), load_dataset(root, check_images=False)
    assert list(checked.index["filename"]) == ["img_0.png", "img_3.png"]
    assert list(unchecked.index["filename"]) == ["img_0.png", "img_1.png", "img_3.png"]
    assert [p.filename for p in unchecked.problems] == ["img_2.png"]
    assert checked.fingerprint and unchecked.fingerprint == ""


# Natural photographs of any size --------------------------------------------------------


def quadrant_photo(width: int, height: int) -> Image.Image:
    """Red, green, blue and white quadrants (top-left, top-right, bottom-left, bottom-right)."""
    photo = Image.new("RGB", (width, height), (255, 255, 255))
    photo.paste((255, 0, 0), (0, 0, width // 2, height // 2))
    photo.paste((0, 255, 0), (width // 2, 0, width, height // 2))
    photo.paste((0, 0, 255), (0, height // 2, width // 2, height))
    return photo


def test_a_large_jpeg_decodes_at_reduced_scale_to_the_requested_side(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    (root / "street").mkdir(parents=True)
    quadrant_photo(4000, 3000).save(root / "street" / "big.jpg", quality=90)
    decoded: list[tuple[int, int]] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(image, mode, size):
        result = draft(image, mode, size)
        if result is not None:  # thumbnail() asks again; only the first request counts
            decoded.append(image.size)  # the size the decoder will produce
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    dataset = load_dataset(root)
    image = dataset.load_image("street/big.jpg", "RGB", max_side=256)
    assert decoded == [(500, 375)]  # 1/8 scale: 12 MP never decoded in full
    assert image.mode == "RGB" and image.size == (256, 192)
    pixels = np.asarray(image).astype(int)
    for (row, col), colour in {
        (48, 64): (255, 0, 0),
        (48, 192): (0, 255, 0),
        (144, 64): (0, 0, 255),
        (144, 192): (255, 255, 255),
    }.items():
        assert np.abs(pixels[row, col] - colour).max() <= 8
    # Without max_side the cap still applies: 1/1 scale (2000 < 2048), then a resize.
    full = dataset.load_image("street/big.jpg", "L")
    assert full.size == (MAX_DECODED_SIDE, 1536)
    assert decoded[-1] == (4000, 3000)


def test_a_10000_pixel_png_is_resized_on_load_and_keeps_its_values(tmp_path):
    canvas = Image.new("L", (10_000, 10_000), 0)
    canvas.paste(255, (5_000, 0, 10_000, 10_000))
    root = tmp_path / "huge"
    (root / "scan").mkdir(parents=True)
    canvas.save(root / "scan" / "page.png", compress_level=1)  # fast to write, same pixels
    del canvas
    image = load_dataset(root).load_image("scan/page.png", "L")
    assert image.size == (MAX_DECODED_SIDE, MAX_DECODED_SIDE)
    # A step at the middle column; the resampling filter may ring a few pixels either side.
    pixels = np.asarray(image)
    assert pixels[:, :1016].max() == 0 and pixels[:, 1032:].min() == 255
    assert pixels[:, 1016:1024].mean() < 16 and pixels[:, 1024:1032].mean() > 239


def test_exif_rotation_applies_before_the_resize():
    sideways = Image.new("L", (400, 200), 255)
    sideways.paste(0, (0, 0, 200, 200))  # left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the camera was turned clockwise
    buffer = io.BytesIO()
    sideways.save(buffer, "JPEG", exif=exif, quality=95)
    image = open_image(buffer.getvalue(), max_side=100)
    assert image.size == (50, 100)
    pixels = np.asarray(image).astype(int)
    assert pixels[:45].mean() < 8 and pixels[55:].mean() > 247  # black on top


@pytest.mark.parametrize(
    ("max_side", "error", "message"),
    [
        (0, ValueError, "at least 1 pixel"),
        ("64", TypeError, "an integer"),
        (True, TypeError, "True"),
    ],
)
def test_max_side_must_be_a_positive_integer(max_side, error, message):
    with pytest.raises(error, match=message):
        open_image(png_bytes(Image.new("L", (4, 4))), max_side=max_side)
