"""Batch extraction: streamed features, the Parquet CLI, resuming, and Ray."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, PngImagePlugin

from cnnlens import parquet
from cnnlens.cli import main
from cnnlens.data import Dataset, Problem, load_dataset
from cnnlens.images import open_image, to_mode
from cnnlens.models import DEMO_DATASET_DIR, demo_model, open_model
from cnnlens.parquet import FORMAT, extract_to_parquet
from cnnlens.pipeline import _Extraction, iter_features, load_batch, load_pixels
from cnnlens.preprocess import _plain_png, _resized, scale_uint8_batch, to_batch
from cnnlens.registry import InputSpec, model_info
from tests.generated import write_dataset

LABELS = [i % 10 for i in range(11)]


@pytest.fixture
def digits(tmp_path: Path) -> Dataset:
    """Eleven generated 28×28 images with labels, as a dataset."""
    return load_dataset(write_dataset(tmp_path / "digits", LABELS, size=28))


# The demo's conv layers in its features: conv_1 is features[0], each before its in-place ReLU.
DEMO_CONVS = {"conv_1": 0, "conv_2": 2, "conv_3": 5, "conv_4": 7}


def reference(dataset: Dataset, names: list[str], split: str = "train"):
    """The demo's conv outputs and class probabilities, in float64, from Pillow's decoding."""
    model = demo_model().double()
    x = to_batch([dataset.load_image(name, "L", split) for name in names]).double()
    maps = {}
    with torch.no_grad():
        probabilities = torch.softmax(model(x), 1).numpy()
        for index, layer in enumerate(model.features):
            x = layer(x)
            for name, at in DEMO_CONVS.items():
                if at == index:
                    maps[name] = x.clone().numpy()
    return maps, probabilities


def collect(batches) -> tuple[list[str], list, dict[str, np.ndarray], np.ndarray | None, list]:
    batches = list(batches)
    names = [n for b in batches for n in b.filenames]
    labels = [label for b in batches for label in b.labels]
    features = {
        key: np.concatenate([b.features[key] for b in batches]) for key in batches[0].features
    }
    predictions = (
        None if batches[0].predictions is None else np.concatenate([b.predictions for b in batches])
    )
    problems = [p for b in batches for p in b.problems]
    return names, labels, features, predictions, problems


def test_pooled_features_and_predictions_equal_the_model(demo, digits):
    names, labels, features, predictions, problems = collect(
        iter_features(demo, digits, ["conv_2", "conv_4"], batch_size=4, with_predictions=True)
    )
    assert names == list(digits.index["filename"]) and labels == LABELS and problems == []
    maps, probabilities = reference(digits, names)
    conv2, conv4 = maps["conv_2"], maps["conv_4"]
    assert features["conv_2"].dtype == np.float32 and features["conv_2"].shape == (11, 32)
    np.testing.assert_allclose(features["conv_2"], conv2.mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(features["conv_4"], conv4.mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(predictions, probabilities, rtol=1e-5, atol=1e-5)
    assert (conv2.min(axis=(2, 3)) < 0).any()  # the pre-ReLU values, not ReLU(conv)

    _, _, maxed, none, _ = collect(iter_features(demo, digits, ["conv_2"], pool="max"))
    np.testing.assert_allclose(maxed["conv_2"], conv2.max(axis=(2, 3)), rtol=1e-5, atol=1e-5)
    assert none is None  # predictions only when asked for
    _, _, whole, _, _ = collect(iter_features(demo, digits, ["conv_2"], pool="none"))
    assert whole["conv_2"].shape == (11, 32, 28, 28)
    np.testing.assert_allclose(whole["conv_2"], conv2, rtol=1e-5, atol=1e-5)


def test_test_split_has_no_labels(demo, tmp_path):
    root = write_dataset(tmp_path / "d", [0, 1], size=28)
    (root / "test").mkdir()
    for name in ("a.png", "b.png"):
        (root / "test" / name).write_bytes((root / "train" / "img_0.png").read_bytes())
    (root / "test.csv").write_text("filename\na.png\nb.png\n")
    names, labels, features, _, _ = collect(
        iter_features(demo, load_dataset(root), ["conv_1"], split="test")
    )
    expected = reference(load_dataset(root), ["img_0.png"])[0]["conv_1"]
    assert names == ["a.png", "b.png"] and labels == [None, None]
    np.testing.assert_allclose(
        features["conv_1"], expected.mean(axis=(2, 3)).repeat(2, 0), rtol=1e-5, atol=1e-5
    )


def test_unreadable_images_are_reported_and_skipped_in_workers(demo, digits):
    # Damaged after indexing: the run finds out while decoding.
    (digits.root / "train" / "img_3.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    for name in ("img_8.png", "img_9.png"):
        (digits.root / "train" / name).unlink()
    batches = list(iter_features(demo, digits, ["conv_1"], batch_size=2, workers=2))
    names, labels, features, _, problems = collect(batches)
    good = [f"img_{i}.png" for i in range(11) if i not in (3, 8, 9)]
    assert names == good and labels == [LABELS[i] for i in range(11) if i not in (3, 8, 9)]
    assert [p.filename for p in problems] == ["img_3.png", "img_8.png", "img_9.png"]
    assert all(isinstance(p, Problem) for p in problems)
    assert [p.reason for p in problems] == [
        "img_3.png is not an image Pillow can read (PNG, JPEG, ...).",
        *(
            f"{name} cannot be read: No such file or directory. "
            "Reload the dataset if its files changed."
            for name in ("img_8.png", "img_9.png")
        ),
    ]
    expected = reference(digits, good)[0]["conv_1"]
    np.testing.assert_allclose(features["conv_1"], expected.mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)
    # Batch [img_8, img_9] failed whole: it still yields arrays of the right shape.
    assert batches[4].filenames == [] and batches[4].features["conv_1"].shape == (0, 32)


@pytest.mark.parametrize("model", ["demo", "alexnet", "convnext_tiny"])
def test_bytes_scaled_on_the_device_equal_to_batch(tmp_path, model):
    """Workers send uint8 pixels; scale_uint8_batch gives exactly what to_batch gives."""
    spec = model_info(model).spec
    root = write_dataset(tmp_path / "rgb", [0, 1, 2], size=(30, 41), mode="RGB")
    dataset = load_dataset(root)
    names = list(dataset.index["filename"])
    pixels = torch.stack([load_pixels(dataset, name, "train", spec) for name in names])
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, *spec.shape)
    expected = to_batch([dataset.load_image(name, spec.mode) for name in names], spec)
    cpu = torch.device("cpu")
    assert torch.equal(scale_uint8_batch(pixels, spec, cpu, torch.float32), expected)
    halves = scale_uint8_batch(pixels, spec, cpu, torch.bfloat16)
    assert torch.equal(halves, expected.to(torch.bfloat16))


def _png(array: np.ndarray, **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG", **save)
    return out.getvalue()


def _pillow_pixels(data: bytes, spec: InputSpec) -> torch.Tensor:
    image = _resized(to_mode(open_image(data, name="a.png"), spec.mode), spec)
    array = np.asarray(image)
    return torch.from_numpy(np.array(array[None] if array.ndim == 2 else array.transpose(2, 0, 1)))


GREY = np.random.RandomState(0).randint(0, 256, (28, 28), dtype=np.uint8)
COLOUR = np.random.RandomState(1).randint(0, 256, (28, 28, 3), dtype=np.uint8)
GREY_SPEC = InputSpec(mode="L", size=(28, 28))
RGB_SPEC = InputSpec(mode="RGB", size=(28, 28))
TEXT = PngImagePlugin.PngInfo()
TEXT.add_text("Comment", "made by a test")
TRANSPARENT = _png(GREY, transparency=0)


def _with_ihdr_byte(data: bytes, offset: int, value: int) -> bytes:
    """The PNG with one IHDR byte changed and the chunk's CRC made right again."""
    header = bytearray(data[12:29])
    header[4 + offset] = value
    return data[:12] + bytes(header) + zlib.crc32(header).to_bytes(4, "big") + data[33:]


def _with_bad_idat_crc(data: bytes) -> bytes:
    at = data.index(b"IDAT") - 4
    end = at + 8 + int.from_bytes(data[at : at + 4], "big")
    return data[:end] + bytes(b ^ 0xFF for b in data[end : end + 4]) + data[end + 4 :]


@pytest.mark.parametrize(
    ("data", "spec", "fast"),
    [
        (_png(GREY), GREY_SPEC, True),
        (_png(GREY), RGB_SPEC, True),  # the grey channel repeated, as Pillow does
        (_png(COLOUR), RGB_SPEC, True),
        (_png(GREY, optimize=True, compress_level=9), GREY_SPEC, True),
        (_png(COLOUR), GREY_SPEC, True),  # converted by Pillow, as to_mode does
        (_png(GREY, pnginfo=TEXT), GREY_SPEC, False),  # text may hold an orientation
        (TRANSPARENT, GREY_SPEC, False),
        (_png(GREY[:, :27]), GREY_SPEC, False),  # resized by Pillow
        (_png(GREY.astype(np.uint16) * 257), GREY_SPEC, False),
        (_png(COLOUR).replace(b"IEND", b"IENX"), RGB_SPEC, False),
        (_png(GREY)[:60], GREY_SPEC, False),  # truncated: Pillow words the error
        (_with_ihdr_byte(_png(GREY), 12, 1), GREY_SPEC, False),  # marked interlaced
        (_with_bad_idat_crc(_png(GREY)), GREY_SPEC, False),
        (_png(np.zeros((224, 224, 3), np.uint8)), model_info("alexnet").spec, False),
    ],
    ids=[
        "grey", "grey-as-rgb", "rgb", "optimised", "rgb-as-grey", "text", "alpha", "size",
        "16-bit", "unknown-chunk", "truncated", "interlaced", "bad-crc", "resized-then-cropped",
    ],
)  # fmt: skip
def test_plain_pngs_skip_pillows_parser_with_pillows_values(tmp_path, data, spec, fast):
    """Only the PNGs where Pillow's decoder alone gives exactly Pillow's pixels skip its parser."""
    assert (_plain_png(data, spec) is not None) is fast
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.png").write_bytes(data)
    (tmp_path / "train.csv").write_text("filename,label\na.png,0\n")
    try:
        expected = _pillow_pixels(data, spec)
    except ValueError as error:
        with pytest.raises(ValueError, match=re.escape(str(error))):
            load_pixels(load_dataset(tmp_path), "a.png", "train", spec)
        return
    pixels = load_pixels(load_dataset(tmp_path), "a.png", "train", spec)
    assert pixels.dtype == torch.uint8 and torch.equal(pixels, expected)


def test_demo_digits_skip_pillows_parser_with_pillows_values(demo):
    dataset = load_dataset(DEMO_DATASET_DIR)
    names = list(dataset.index["filename"])[::40]
    for name in names:
        data = dataset.read_bytes(name)
        assert _plain_png(data, demo.spec) is not None, name
        pixels = load_pixels(dataset, name, "train", demo.spec)
        assert torch.equal(pixels, _pillow_pixels(data, demo.spec)), name


def test_a_batch_leaves_out_the_images_that_fail_and_says_where(demo, digits):
    (digits.root / "train" / "img_2.png").write_bytes(b"not an image")
    names = ["img_1.png", "img_2.png", "img_3.png"]
    pixels, read, failed = load_batch(digits, names, "train", demo.spec)
    assert read == [0, 2] and [position for position, _ in failed] == [1]
    assert "img_2.png" in failed[0][1] and "not an image" in failed[0][1]
    expected = torch.stack([load_pixels(digits, names[i], "train", demo.spec) for i in read])
    assert pixels is not None and torch.equal(pixels, expected)
    assert load_batch(digits, ["img_2.png"], "train", demo.spec)[0] is None


def test_cpu_workers_run_the_network_and_keep_the_order(demo, digits):
    """On a CPU each worker decodes and extracts its batches; the stream is unchanged."""
    (digits.root / "train" / "img_4.png").write_bytes(b"not an image")
    kwargs = {"pool": "none", "batch_size": 3, "with_predictions": True}
    inline = collect(iter_features(demo, digits, ["conv_2", "conv_4"], workers=0, **kwargs))
    spread = collect(
        iter_features(
            demo, digits, ["conv_2", "conv_4"], workers=2, network_in_workers=True, **kwargs
        )
    )
    assert spread[0] == inline[0] == [f"img_{i}.png" for i in range(11) if i != 4]
    assert spread[1] == inline[1] and spread[4] == inline[4]
    assert [p.filename for p in spread[4]] == ["img_4.png"]
    for name in ("conv_2", "conv_4"):
        np.testing.assert_allclose(spread[2][name], inline[2][name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spread[3], inline[3], rtol=1e-5, atol=1e-6)
    maps, probabilities = reference(digits, spread[0])
    np.testing.assert_allclose(spread[2]["conv_4"], maps["conv_4"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(spread[3], probabilities, rtol=1e-4, atol=1e-6)


_FAULTS = """
import resource, sys, torch
from cnnlens.malloc import keep_freed_memory
from cnnlens.models import open_model
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    keep_freed_memory()
loaded = open_model("demo")
extract = loaded.extractor(["conv_1", "conv_2", "conv_3", "conv_4"])
x = torch.rand(64, 1, 28, 28)
with torch.inference_mode():
    for _ in range(3):  # the heap grows to a batch's size
        extract(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        extract(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_memory_stops_each_batch_faulting_its_maps_in_again():
    """A batch's maps are about 25 MB (6,000 pages): kept, ten batches fault in next to none."""
    run = [sys.executable, "-c", _FAULTS, "keep"]
    faults = int(subprocess.run(run, capture_output=True, text=True, check=True).stdout)
    assert faults < 6000  # one batch's worth; without it, 48,000 to 62,000 here


def test_cpu_worker_threads_each_run_one_intra_op_thread_and_stop_when_closed(
    demo, digits, monkeypatch
):
    """The workers are threads of this process; torch's thread count here is untouched."""
    seen: list[tuple[str, int]] = []
    run = _Extraction.__call__

    def spy(self, pixels):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return run(self, pixels)

    monkeypatch.setattr(_Extraction, "__call__", spy)
    before = torch.get_num_threads()
    kwargs = {"batch_size": 2, "workers": 2, "network_in_workers": True}
    stream = iter_features(demo, digits, ["conv_1"], **kwargs)
    first = next(stream)
    assert first.filenames == ["img_0.png", "img_1.png"]
    stream.close()  # a consumer that stops early: the threads finish their batches and end
    assert not [t for t in threading.enumerate() if t.name.startswith("cnnlens-batch")]
    assert {count for _, count in seen} == {1}
    assert all(name.startswith("cnnlens-batch") for name, _ in seen)
    assert len(seen) <= 4  # at most two batches per thread ahead of the consumer
    assert torch.get_num_threads() == before


def test_skip_stop_and_progress(demo, digits):
    progress: list[tuple[int, int]] = []
    asked = []

    def stop() -> bool:
        asked.append(None)
        return len(asked) > 2

    batches = list(
        iter_features(
            demo,
            digits,
            ["conv_1"],
            batch_size=3,
            skip={"img_0.png", "img_5.png"},
            should_stop=stop,
            on_progress=lambda done, total: progress.append((done, total)),
        )
    )
    assert [b.filenames for b in batches] == [
        ["img_1.png", "img_2.png", "img_3.png"],
        ["img_4.png", "img_6.png", "img_7.png"],
    ]
    assert progress == [(3, 9), (6, 9)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool": "sum"}, "pool must be one of mean, max, none"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"split": "test"}, "has no test CSV"),
        ({"split": "valid"}, "split must be 'train' or 'test'"),
    ],
)
def test_bad_arguments_raise_clear_errors(demo, digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        next(iter_features(demo, digits, ["conv_1"], **kwargs))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@CUDA
def test_on_a_gpu_decoding_processes_feed_it_and_the_features_equal_the_model(digits):
    """The GPU path: DataLoader processes, pinned memory, copies back overlapped."""
    (digits.root / "train" / "img_3.png").write_bytes(b"not an image")
    loaded = open_model("demo", device="cuda")
    names, labels, features, predictions, problems = collect(
        iter_features(
            loaded, digits, ["conv_2", "conv_4"], batch_size=2, workers=2, with_predictions=True
        )
    )
    good = [f"img_{i}.png" for i in range(11) if i != 3]
    assert names == good and [p.filename for p in problems] == ["img_3.png"]
    assert labels == [LABELS[i] for i in range(11) if i != 3]
    maps, probabilities = reference(digits, good)
    # float32 on the GPU, not torch's default TF32 (which is off by up to 7.6e-4 here).
    for name in ("conv_2", "conv_4"):
        assert features[name].dtype == np.float32
        np.testing.assert_allclose(
            features[name], maps[name].mean(axis=(2, 3)), rtol=1e-4, atol=1e-5
        )
    np.testing.assert_allclose(predictions, probabilities, rtol=1e-4, atol=1e-5)
    # bf16 on the GPU: the same values to bf16's 8 bits.
    halves = open_model("demo", device="cuda", dtype=torch.bfloat16)
    _, _, rough, _, _ = collect(iter_features(halves, digits, ["conv_4"], workers=2))
    assert rough["conv_4"].dtype == np.float32
    np.testing.assert_allclose(rough["conv_4"], maps["conv_4"].mean(axis=(2, 3)), atol=5e-2)


@CUDA
def test_cli_on_cuda_writes_what_the_cpu_writes(digits, tmp_path):
    files = {}
    for device in ("cpu", "cuda"):
        files[device] = tmp_path / f"{device}.parquet"
        argv = ["extract", str(digits.root), "--model", "demo", "--layers", "conv_1,conv_4"]
        argv += ["--out", str(files[device]), "--device", device, "--batch-size", "4", "--quiet"]
        assert main(argv) == 0
    cpu, cuda = read_features(files["cpu"]), read_features(files["cuda"])
    assert cuda[:2] == cpu[:2] and cuda[3] == cpu[3]  # names, labels, metadata
    for name in ("conv_1", "conv_4"):
        np.testing.assert_allclose(cuda[2][name], cpu[2][name], rtol=1e-4, atol=1e-5)


def test_unknown_layer_lists_the_valid_ones(demo, digits):
    with pytest.raises(
        ValueError, match=r"Unknown layer 'conv_9'\. Valid layers: conv_1, relu_1, conv_2"
    ):
        next(iter_features(demo, digits, ["conv_9"]))


def read_features(path: Path) -> tuple[list[str], list, dict[str, np.ndarray], dict]:
    table = pq.read_table(path)
    columns = {
        name: table[name].combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
        for name in table.column_names[2:]
    }
    metadata = json.loads(table.schema.metadata[b"cnnlens"])
    return table["filename"].to_pylist(), table["label"].to_pylist(), columns, metadata


def test_parquet_rows_columns_and_metadata(demo, digits, tmp_path):
    out = tmp_path / "features.parquet"
    result = extract_to_parquet(demo, digits, out, ["conv_4", "conv_2"], pool="none", batch_size=4)
    assert result.complete and result.rows == 11 and result.resumed == 0 and result.out == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "features.parquet"]
    names, labels, columns, metadata = read_features(out)
    assert pq.read_table(out).schema.field("conv_2").type == pa.list_(pa.float32())
    assert names == [f"img_{i}.png" for i in range(11)] and labels == LABELS
    assert list(columns) == ["conv_2", "conv_4"]  # network order
    maps, _ = reference(digits, names)
    conv2, conv4 = maps["conv_2"], maps["conv_4"]
    np.testing.assert_allclose(columns["conv_2"], conv2.reshape(11, -1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(columns["conv_4"], conv4.reshape(11, -1), rtol=1e-5, atol=1e-5)
    assert metadata == {
        "format": FORMAT,
        "model": "demo",
        "weights": demo.weights_id,
        "dtype": "float32",
        "dataset": str(digits.root.resolve()),
        "split": "train",
        "pool": "none",
        "layers": {"conv_2": [32, 28, 28], "conv_4": [64, 14, 14]},
    }
    # The default layers, max pooling, an unreadable image reported with the dataset's problems.
    (digits.root / "train" / "img_3.png").write_bytes(b"not an image")
    result = extract_to_parquet(demo, digits, out, pool="max", batch_size=4)
    names, _, columns, metadata = read_features(out)
    assert result.rows == 10 and [p.filename for p in result.problems] == ["img_3.png"]
    assert names == [f"img_{i}.png" for i in range(11) if i != 3]
    assert list(columns) == ["conv_1", "conv_2", "conv_3", "conv_4"]
    np.testing.assert_allclose(
        columns["conv_4"], np.delete(conv4, 3, axis=0).max(axis=(2, 3)), atol=1e-5
    )
    assert metadata["pool"] == "max" and metadata["layers"]["conv_1"] == [32, 28, 28]


def test_an_interrupted_run_resumes_without_lost_or_repeated_rows(demo, digits, tmp_path):
    whole = tmp_path / "whole.parquet"
    extract_to_parquet(demo, digits, whole, ["conv_3"], batch_size=2)
    out = tmp_path / "resumed.parquet"
    batches = []
    stopped = extract_to_parquet(
        demo,
        digits,
        out,
        ["conv_3"],
        batch_size=2,
        should_stop=lambda: len(batches) >= 2,
        on_progress=lambda done, total: batches.append((done, total)),
    )
    assert not stopped.complete and not out.exists() and stopped.rows == 4
    assert batches == [(2, 11), (4, 11)]

    def crash(done: int, total: int) -> None:
        if done >= 8:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):  # an exception keeps what was done too
        extract_to_parquet(demo, digits, out, ["conv_3"], batch_size=2, on_progress=crash)
    assert not out.exists()
    with pytest.raises(ValueError, match=r"other settings \(pool: 'mean'\).*--restart"):
        extract_to_parquet(demo, digits, out, ["conv_3"], pool="max")
    done = []
    result = extract_to_parquet(
        demo,
        digits,
        out,
        ["conv_3"],
        batch_size=2,
        on_progress=lambda d, t: done.append((d, t)),
    )
    assert result.complete and result.rows == 11 and result.resumed == 8
    assert done == [(10, 11), (11, 11)]
    assert not (tmp_path / "resumed.parquet.parts").exists()
    names, labels, columns, _ = read_features(out)
    expected = read_features(whole)
    assert names == expected[0] and labels == expected[1]
    np.testing.assert_array_equal(columns["conv_3"], expected[2]["conv_3"])


def test_restart_discards_an_unfinished_run(demo, digits, tmp_path):
    out = tmp_path / "f.parquet"
    extract_to_parquet(demo, digits, out, ["conv_1"], batch_size=2, should_stop=lambda: True)
    assert (tmp_path / "f.parquet.parts" / "manifest.json").is_file()
    result = extract_to_parquet(demo, digits, out, ["conv_1"], pool="max", restart=True)
    assert result.complete and result.resumed == 0 and read_features(out)[3]["pool"] == "max"
    with pytest.raises(ValueError, match="must end in .parquet"):
        extract_to_parquet(demo, digits, tmp_path / "f.csv", ["conv_1"])


def test_cli_writes_the_file_resumes_and_reports_left_out_images(demo, digits, tmp_path, capsys):
    (digits.root / "train" / "img_3.png").write_bytes(b"not an image")
    out = tmp_path / "cli.parquet"
    # An interrupted run's parts, then the CLI finishes the file.
    batches = []
    extract_to_parquet(
        demo,
        digits,
        out,
        ["conv_1", "conv_3"],
        batch_size=2,
        should_stop=lambda: bool(batches),
        on_progress=lambda done, total: batches.append(done),
    )
    args = [str(digits.root), "--model", "demo", "--layers", "conv_1, conv_3", "--out", str(out)]
    argv = ["extract", *args, "--device", "cpu", "--batch-size", "2", "--workers", "0"]
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        # Found when decoded: the CLI's index does not open the images.
        "1 image left out: img_3.png (img_3.png is not an image Pillow can read (PNG, JPEG, ...).)",
        f"Wrote 10 rows (2 from an interrupted run) to {out}.",
    ]
    reference_file = tmp_path / "library.parquet"
    # Indexed as the CLI does, so the batches hold the same images and the values are equal.
    unchecked = load_dataset(digits.root, check_images=False)
    extract_to_parquet(demo, unchecked, reference_file, ["conv_1", "conv_3"], batch_size=2)
    names, labels, columns, metadata = read_features(out)
    expected = read_features(reference_file)
    assert names == expected[0] and labels == expected[1] and metadata == expected[3]
    for name in ("conv_1", "conv_3"):
        np.testing.assert_array_equal(columns[name], expected[2][name])


def test_cli_in_bfloat16_records_it_and_comes_close_to_float32(digits, tmp_path):
    files = {}
    for dtype in ("float32", "bfloat16"):
        files[dtype] = tmp_path / f"{dtype}.parquet"
        argv = ["extract", str(digits.root), "--model", "demo", "--layers", "conv_4"]
        argv += ["--out", str(files[dtype]), "--device", "cpu", "--dtype", dtype, "--quiet"]
        assert main(argv) == 0
    exact, rough = read_features(files["float32"]), read_features(files["bfloat16"])
    assert exact[3]["dtype"] == "float32" and rough[3]["dtype"] == "bfloat16"
    assert rough[0] == exact[0]
    difference = np.abs(rough[2]["conv_4"] - exact[2]["conv_4"])
    assert 0 < difference.max() < 5e-2  # bfloat16's 8-bit mantissa, not float32's values


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "conv_9"], "Unknown layer 'conv_9'. Valid layers: conv_1, "),
        (["--out", "x.csv"], "The output file must end in .parquet, got x.csv."),
        (["--model", "lenet"], "Unknown model 'lenet'."),
    ],
)
def test_cli_user_errors_are_one_line_with_status_2(digits, tmp_path, capsys, args, message):
    base = {"--model": "demo", "--out": str(tmp_path / "f.parquet")}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = ["extract", str(digits.root), *(x for pair in base.items() for x in pair), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlens extract: error: " + message)
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "f.parquet").exists()


def test_python_m_cnnlens_help():
    done = subprocess.run(
        [sys.executable, "-m", "cnnlens", "extract", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for option in ("--model", "--layers", "--pool", "--out", "--engine", "--address"):
        assert option in done.stdout


def test_ray_engine_without_ray_says_how_to_install_it(demo, digits, monkeypatch):
    from cnnlens.ray_engine import ray_source

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ValueError, match=r"needs Ray Data.*pip install 'ray\[data\]>=2.9'"):
        ray_source(demo, digits, ["conv_1"])


@pytest.fixture
def local_ray(tmp_path_factory):
    """A local Ray with 2 CPUs whose files stay under pytest's temporary folder."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield ray
    ray.shutdown()


@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")
def test_ray_engine_writes_the_same_file_as_a_local_run(demo, tmp_path, local_ray):
    from cnnlens.ray_engine import ray_source

    dataset = load_dataset(write_dataset(tmp_path / "forty", [i % 10 for i in range(40)], size=28))
    (dataset.root / "train" / "img_7.png").write_bytes(b"not an image")
    local = tmp_path / "local.parquet"
    extract_to_parquet(demo, dataset, local, ["conv_2", "conv_4"], batch_size=8)
    on_ray = tmp_path / "ray.parquet"
    source = ray_source(demo, dataset, ["conv_2", "conv_4"], batch_size=8)
    result = extract_to_parquet(
        demo, dataset, on_ray, ["conv_2", "conv_4"], batch_size=8, source=source
    )
    assert result.complete and result.rows == 39
    assert [(p.filename, p.reason) for p in result.problems] == [
        ("img_7.png", "img_7.png is not an image Pillow can read (PNG, JPEG, ...).")
    ]
    names, labels, columns, metadata = read_features(on_ray)
    expected = read_features(local)
    assert names == expected[0] and labels == expected[1] and metadata == expected[3]
    assert pq.read_table(on_ray).schema == pq.read_table(local).schema
    for name in ("conv_2", "conv_4"):
        np.testing.assert_allclose(columns[name], expected[2][name], rtol=1e-5, atol=1e-5)


def test_parts_written_in_row_groups_resume_and_join_to_the_same_file(
    demo, digits, tmp_path, monkeypatch
):
    whole = tmp_path / "whole.parquet"
    extract_to_parquet(demo, digits, whole, ["conv_2"], batch_size=2)
    assert pq.ParquetFile(whole).metadata.num_row_groups == 1  # a lone part, renamed
    # Parts of at least 5 rows, written 3 or more rows at a time; an exception after
    # 8 rows still writes what was buffered.
    monkeypatch.setattr(parquet, "_PART_ROWS", 5)
    monkeypatch.setattr(parquet, "_GROUP_ROWS", 3)
    out = tmp_path / "grouped.parquet"

    def crash(done: int, total: int) -> None:
        if done >= 8:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        extract_to_parquet(demo, digits, out, ["conv_2"], batch_size=2, on_progress=crash)
    parts = sorted((tmp_path / "grouped.parquet.parts").glob("part-*"))
    assert [p.name for p in parts] == ["part-000000.parquet", "part-000001.parquet"]
    groups = [pq.ParquetFile(part).metadata for part in parts]
    assert [(g.num_rows, g.num_row_groups) for g in groups] == [(6, 2), (2, 1)]
    result = extract_to_parquet(demo, digits, out, ["conv_2"], batch_size=2)
    assert result.complete and result.resumed == 8 and result.rows == 11
    names, labels, columns, metadata = read_features(out)
    expected = read_features(whole)
    assert names == expected[0] and labels == expected[1] and metadata == expected[3]
    np.testing.assert_array_equal(columns["conv_2"], expected[2]["conv_2"])
