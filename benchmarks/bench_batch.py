"""Batch extraction throughput: the CLI path against a bare forward over tensors in memory.

    python benchmarks/bench_batch.py [--repeats 5] [--section demo|gpu]
    python benchmarks/bench_batch.py --section demo --limit 512 --repeats 1   # a quick check

demo: ``python -m cnnlens extract`` over the demo's 4,000 digits (decoding,
extraction, pooling and the Parquet file) against a bare loop of the same
extractor over the same digits already decoded into one tensor, same layers and
batch size (goal: >= 0.80 of its rate).

gpu (skipped without CUDA): VGG16 up to conv_8 at 224×224, batch 64, bf16 and
channels_last. The extraction (iter_features over --images rows of one picture
stored as an uncompressed PNG: no files to read, but Pillow's PNG decoder still
takes about 0.5 ms an image; the crop and batching, the copies to the GPU and
back, scaling and pooling count) against a
bare forward of the truncated network on a batch already on the GPU (goal:
>= 0.80); and, apart, the
end-to-end rate of the CLI over --jpegs JPEG files, which decoding bounds.

Runs are interleaved, repeat after repeat, and the script prints medians and
ratios. Not a test: machines are noisy, so read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnlens.cli import main as cli
from cnnlens.data import Dataset, load_dataset
from cnnlens.malloc import keep_freed_memory
from cnnlens.models import DEMO_DATASET_DIR, open_model
from cnnlens.pipeline import iter_features
from cnnlens.preprocess import to_batch

BATCH = 64


def measure(methods: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Median images per second of each method, run interleaved; each returns its image count."""
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for run in methods.values():  # warm-up: allocator, kernels, worker start, page cache
        run()
    for _ in range(repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            images = run()
            rates[name].append(images / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def report(title: str, rates: dict[str, float], baseline: str, goal: float) -> None:
    print(f"\n{title}")
    print(f"{'method':<52} {'img/s':>10} {'/ baseline':>11}")
    for name, rate in rates.items():
        print(f"{name:<52} {rate:>10.0f} {rate / rates[baseline]:>11.2f}")
    first = next(iter(rates))
    print(f"{first} / {baseline}: {rates[first] / rates[baseline]:.2f} (goal >= {goal:.2f})")


def bare_loop(extract: Callable, batches: list[torch.Tensor], sync: bool) -> Callable[[], int]:
    def run() -> int:
        with torch.inference_mode():
            for x in batches:
                extract(x)
        if sync:
            torch.cuda.synchronize()
        return sum(len(x) for x in batches)

    return run


def bench_demo(repeats: int, limit: int | None) -> None:
    # As the command line does: glibc's default would make the bare loop fault its
    # maps in again at each batch, or not, by the history of what was freed
    # (1,500 to 2,800 img/s here), so the baseline would be as slow as chance makes it.
    keep_freed_memory()
    loaded = open_model("demo")
    layers = loaded.default_layers()
    dataset = load_dataset(DEMO_DATASET_DIR)
    names = list(dataset.index["filename"])[:limit]
    pixels = to_batch([dataset.load_image(name, "L") for name in names], loaded.spec)
    extract = loaded.extractor(layers)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "digits"
        if limit is None:
            root = DEMO_DATASET_DIR
        else:  # the first digits only, as a dataset of their own
            (root / "train").mkdir(parents=True)
            for name in names:
                os.link(DEMO_DATASET_DIR / "train" / name, root / "train" / name)
            dataset.index.iloc[:limit][["filename", "label"]].to_csv(
                root / "train.csv", index=False
            )
        out = Path(folder) / "features.parquet"
        argv = ["extract", str(root), "--model", "demo", "--layers", ",".join(layers)]
        argv += ["--out", str(out), "--batch-size", str(BATCH), "--quiet", "--restart"]

        def command_line() -> int:
            with contextlib.redirect_stderr(io.StringIO()) as said:
                if cli(argv) != 0:
                    raise RuntimeError(f"the CLI failed: {said.getvalue()}")
            return len(names)

        rates = measure(
            {
                "python -m cnnlens extract (decode, extract, write)": command_line,
                "bare extractor loop over decoded digits": bare_loop(
                    extract, list(pixels.split(BATCH)), sync=False
                ),
            },
            repeats,
        )
    report(
        f"demo CNN, {len(names)} digits, batch {BATCH}, layers {', '.join(layers)}, pool mean, "
        f"{torch.get_num_threads()} threads",
        rates,
        "bare extractor loop over decoded digits",
        0.80,
    )


class _Decoded(Dataset):
    """A dataset whose every image is one picture stored as an uncompressed PNG at the
    size preprocessing resizes to, so that decoding costs next to nothing."""

    encoded: bytes

    def read_bytes(self, filename: str, split: str = "train") -> bytes:
        return self.encoded


def _jpeg_dataset(root: Path, count: int) -> Dataset:
    """``count`` random-texture JPEGs of 500×375 (ImageNet's typical size) in the CSV layout."""
    rng = np.random.RandomState(0)
    (root / "train").mkdir(parents=True)
    base = rng.randint(0, 256, (375 // 8, 500 // 8, 3), dtype=np.uint8)
    lines = ["filename,label"]
    for i in range(count):
        image = Image.fromarray(np.roll(base, i, axis=1)).resize((500, 375))
        image.save(root / "train" / f"{i:05d}.jpg", quality=90)
        lines.append(f"{i:05d}.jpg,{i % 10}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return load_dataset(root)


def bench_gpu(repeats: int, images: int, jpegs: int, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        print("\ngpu section skipped: no CUDA device here.")
        return
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    bare = f"bare {str(dtype).removeprefix('torch.')} channels_last forward to conv_8"
    loaded = open_model("vgg16", weights="random", device=device, dtype=dtype)
    layers = ["conv_1", "conv_5", "conv_8"]  # features[0], [10], [17]
    truncated = copy.deepcopy(loaded.model.features[:18]).to(memory_format=torch.channels_last)
    on_device = torch.randn(BATCH, 3, 224, 224, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last
    )
    workers = max(1, (os.cpu_count() or 2) - 1)
    with tempfile.TemporaryDirectory() as folder:
        files = _jpeg_dataset(Path(folder) / "jpegs", jpegs)
        # Many rows, one picture: no files to read, at the size preprocessing resizes
        # to, so decoding, its centre crop and the scaling are left.
        side = loaded.spec.resize or loaded.spec.size[0]
        picture = files.load_image(files.index["filename"][0], "RGB").resize((side, side))
        stored = io.BytesIO()
        picture.save(stored, format="PNG", compress_level=0)
        _Decoded.encoded = stored.getvalue()
        rows = pd.DataFrame({"filename": [f"{i:06d}.jpg" for i in range(images)], "label": 0})
        decoded = _Decoded(
            **{f.name: getattr(files, f.name) for f in dataclasses.fields(files)} | {"index": rows}
        )

        def extraction(dataset: Dataset) -> int:
            done = 0
            for batch in iter_features(
                loaded, dataset, layers, batch_size=BATCH, workers=workers, pool="mean"
            ):
                done += len(batch.filenames)
            return done

        rates = measure(
            {
                "iter_features, uncompressed PNGs (pool mean)": lambda: extraction(decoded),
                bare: bare_loop(truncated, [on_device] * (images // BATCH), sync=device == "cuda"),
            },
            repeats,
        )
        report(
            f"vgg16 ({dtype}), {images} images of 224×224, batch {BATCH}, layers "
            f"{', '.join(layers)}, {workers} workers, on {device}",
            rates,
            bare,
            0.80,
        )
        out = Path(folder) / "features.parquet"
        argv = ["extract", str(files.root), "--model", "vgg16", "--weights", "random"]
        argv += ["--layers", ",".join(layers), "--out", str(out), "--device", device]
        argv += ["--batch-size", str(BATCH), "--workers", str(workers), "--quiet", "--restart"]
        if device == "cuda":
            argv += ["--dtype", "bfloat16"]
        # The steady rate (decoding bounds it), then the whole command with its start.
        steady = measure({"jpegs": lambda: extraction(files)}, repeats)["jpegs"]
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            cli(argv)
        seconds = time.perf_counter() - start
        print(
            f"end to end over {jpegs} JPEGs of 500×375 ({workers} workers, decode-bound): "
            f"iter_features {steady:.0f} img/s; python -m cnnlens extract --dtype "
            f"{str(dtype).removeprefix('torch.')} {seconds:.1f} s in all with the model's "
            f"load, {jpegs / seconds:.0f} img/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (5 for figures)")
    parser.add_argument("--section", choices=("demo", "gpu"), help="run one section only")
    parser.add_argument("--limit", type=int, help="demo: the first N digits only (a quick check)")
    parser.add_argument("--images", type=int, default=65536, help="gpu: images per timed run")
    parser.add_argument("--jpegs", type=int, default=4096, help="gpu: JPEGs for the end to end")
    parser.add_argument("--device", default="cuda", help="gpu: cuda, or cpu for a quick check")
    args = parser.parse_args()
    repeats = max(args.repeats, 1)
    if args.section == "demo":
        bench_demo(repeats, args.limit)
        return
    if args.section == "gpu":
        bench_gpu(repeats, args.images, args.jpegs, args.device)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {repeats} repeats")
    # Each section in a fresh process, as in bench_extract.py.
    for section in ("demo", "gpu"):
        command = [sys.executable, __file__, "--section", section, "--repeats", str(repeats)]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
