"""Feature visualization cost: the demo's atlas, one ResNet-18 channel, GPU batching, a cached tile.

    python benchmarks/bench_visualize.py [--repeats 3] [--threads N]
        [--section demo|resnet18|gpu|cached|legibility]

- demo: every channel of the demo CNN's conv_2 (32) at 28×28, 256 steps, one
  batched optimisation; and every channel of conv_4 (64) for comparison.
  Goal (issue 16): at most 10 s on a 2-core CPU.
- resnet18: one channel of ResNet-18's layer3 (random weights) at 128×128, 256
  steps. Goal: at most 30 s on CPU.
- gpu: on CUDA only, 64 channels of layer3 in one batch against one channel.
  Goal: at most 3× the time.
- legibility (issue 24): for each method ``visualize`` has, side by side, on the demo's
  conv_1 and conv_2 (channels 0-7, 28 px, 256 steps) and on ResNet-18 (random weights,
  128 px, 128 steps to keep the CPU time down) layer2 and layer3: near-uniform images, the median
  distance to the nearest real image in penultimate features (and ÷ lucid's), and
  channels that fire at least as on the median real image; a row of real test images as
  the yardstick (the demo's digits, converted to RGB for ResNet-18). Then one demo
  digit's accentuation, timed. The images go to /tmp/legibility_demo.png and
  /tmp/legibility_resnet18.png (rows: channels; columns: methods, per layer).
- cached: one tile read back by the results store (``ChannelImagesSpec``), from the store's memory
  and from disk (a new store object on the same folder, as after a restart).

Each section runs in a fresh process, as the command line runs it
(``keep_freed_memory``: glibc keeps the pages a step frees for the next step).
The first call of a process pays for oneDNN's kernel setup; it is reported
apart, and the medians are of the calls after it. Not a test: machines are
noisy, so read the medians, and the load average printed first: on two cores
that other processes share, torch's two intra-op threads wait for each other at
every layer of every step, and ``--threads 1`` is then several times faster.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnlens import feature_visualization
from cnnlens.accentuation import accentuate
from cnnlens.feature_visualization import ChannelImagesSpec, visualize
from cnnlens.legibility import (
    legibility_table,
    load_pixels,
    median_activation,
    reference_features,
)
from cnnlens.malloc import keep_freed_memory
from cnnlens.models import open_model
from cnnlens.store import ResultStore

GOALS = {"demo": 10.0, "resnet18": 30.0, "gpu": 3.0, "cached": 1.0, "accentuate": 3.0}
CHANNELS = list(range(8))


def timed(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(the first call's seconds, the median of ``repeats`` calls after it)."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def verdict(value: float, goal: float) -> str:
    return "meets" if value <= goal else "MISSES"


def bench_demo(repeats: int) -> None:
    loaded = open_model("demo", device="cpu")
    for layer, goal in (("conv_2", GOALS["demo"]), ("conv_4", None)):
        channels = list(range(len(loaded.layers.module(layer).weight)))

        def run(layer: str = layer, channels: list[int] = channels) -> None:
            visualize(loaded, layer, channels, steps=256)

        first, median = timed(run, repeats)
        line = (
            f"demo CNN {layer}, all {len(channels)} channels, 28×28, 256 steps: "
            f"median {median:.2f} s ({median / 256 * 1e3:.1f} ms a step), first call {first:.2f} s"
        )
        if goal is not None:
            line += f"; goal <= {goal:.0f} s: {verdict(median, goal)}"
        print(line)


def bench_resnet18(repeats: int) -> None:
    loaded = open_model("resnet18", weights="random", device="cpu")
    first, median = timed(
        lambda: visualize(loaded, "layer3", [0], size=128, steps=256), max(1, repeats)
    )
    print(
        f"ResNet-18 (random weights) layer3, one channel, 128×128, 256 steps: median "
        f"{median:.1f} s ({median / 256 * 1e3:.0f} ms a step), first call {first:.1f} s; "
        f"goal <= {GOALS['resnet18']:.0f} s: {verdict(median, GOALS['resnet18'])}"
    )


def bench_gpu(repeats: int) -> None:
    if not torch.cuda.is_available():
        print("GPU batching: skipped, no CUDA device here")
        return
    loaded = open_model("resnet18", weights="random", device="cuda")
    steps = 128  # the ratio, not the seconds, is the figure
    times = {}
    for count in (1, 64):
        _, times[count] = timed(
            lambda count=count: visualize(
                loaded, "layer3", list(range(count)), size=128, steps=steps
            ),
            repeats,
        )
    ratio = times[64] / times[1]
    print(
        f"GPU ({torch.cuda.get_device_name()}) ResNet-18 layer3 at 128×128, {steps} steps: "
        f"1 channel {times[1]:.2f} s, 64 channels {times[64]:.2f} s, ratio {ratio:.2f}; "
        f"goal <= {GOALS['gpu']:.0f}×: {verdict(ratio, GOALS['gpu'])}"
    )


def bench_cached(repeats: int) -> None:
    loaded = open_model("demo", device="cpu")
    atlas_spec = ChannelImagesSpec(loaded, "conv_2", tuple(range(32)))
    tile = ChannelImagesSpec(loaded, "conv_2", (7,))
    with tempfile.TemporaryDirectory() as folder:
        ResultStore(Path(folder)).run(atlas_spec)
        store = ResultStore(Path(folder))
        memory, disk = [], []
        for _ in range(max(repeats, 20)):
            start = time.perf_counter()
            ResultStore(Path(folder)).run(tile)
            disk.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.run(tile)
            memory.append(time.perf_counter() - start)
        start = time.perf_counter()
        ResultStore(Path(folder)).run(atlas_spec)
        atlas = time.perf_counter() - start
    print(
        f"cached tile: from memory {statistics.median(memory) * 1e3:.2f} ms, from disk "
        f"{statistics.median(disk) * 1e3:.2f} ms; a 32-tile atlas from disk {atlas * 1e3:.1f} ms "
        f"(goal: a tile paints <= {GOALS['cached']:.0f} s after a click; the read is this part)"
    )


def painted(loaded, dataset, layer: str, side: int, steps: int) -> dict[str, torch.Tensor]:
    """Each method's images of CHANNELS (a method that needs a prior gets the dataset's)."""
    methods = getattr(feature_visualization, "METHODS", ("lucid",))
    prior = None
    if any(method != "lucid" for method in methods):
        from cnnlens.priors import image_prior

        prior = image_prior(loaded, dataset, side=side)
    images = {}
    for method in methods:
        chosen = {"method": method, "prior": prior} if method != "lucid" else {}
        start = time.perf_counter()
        images[method] = visualize(loaded, layer, CHANNELS, size=side, steps=steps, **chosen)
        print(f"  {layer} {method}: {time.perf_counter() - start:.1f} s to paint {len(CHANNELS)}")
    return images


def legibility_block(
    loaded,
    dataset,
    layers: tuple[str, ...],
    side: int,
    steps: int,
    train: int | None = None,
    real: int = 500,
):
    """Print each layer's table; return each layer's images by method. ``train``: the
    first training images as the reference (all by default); ``real``: test images."""
    reference = reference_features(loaded, dataset, size=side, images=train)
    shown = {}
    for layer in layers:
        images = painted(loaded, dataset, layer, side, steps)
        medians = median_activation(loaded, layer, CHANNELS, dataset, size=side, images=train)
        table = legibility_table(
            loaded,
            layer,
            CHANNELS,
            images,
            dataset,
            reference=reference,
            medians=medians,
            real=real,
        )
        print(f"{loaded.name} {layer}, channels 0-7, {side} px, {steps} steps:")
        print(table.to_string(float_format=lambda value: f"{value:.2f}"))
        shown[layer] = images
    return shown


def save_grid(shown: dict[str, dict[str, torch.Tensor]], path: str, zoom: int) -> None:
    """Rows: channels; columns: methods, one block per layer, labelled."""
    blocks = []
    for layer, images in shown.items():
        columns = []
        for method, batch in images.items():
            pixels = (batch.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            tiles = [np.pad(tile.transpose(1, 2, 0), ((2, 2), (2, 2), (0, 0))) for tile in pixels]
            columns.append((f"{layer} {method}", np.concatenate(tiles, 0)))
        blocks.extend(columns)
    grid = np.concatenate([column for _, column in blocks], 1)
    grid = np.repeat(np.repeat(grid, zoom, 0), zoom, 1)
    grid = grid[..., 0] if grid.shape[-1] == 1 else grid
    picture = Image.fromarray(grid).convert("RGB")
    labelled = Image.new("RGB", (picture.width, picture.height + 14), "white")
    labelled.paste(picture, (0, 14))
    draw = ImageDraw.Draw(labelled)
    width = picture.width // len(blocks)
    for index, (label, _) in enumerate(blocks):
        draw.text((index * width + 2, 1), label, fill="black")
    labelled.save(path)
    print(f"images: {path}")


def bench_legibility(repeats: int) -> None:
    from cnnlens.models import demo_dataset

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"legibility, {torch.get_num_threads()} intra-op threads (load average {load})")
    dataset = demo_dataset()
    demo = open_model("demo", device="cpu")
    shown = legibility_block(demo, dataset, ("conv_1", "conv_2"), 28, 256)
    save_grid(shown, "/tmp/legibility_demo.png", zoom=4)
    digit = load_pixels(demo, dataset, images=1)[0]
    first, median = timed(lambda: accentuate(demo, "conv_2", 1, digit), repeats)
    result = accentuate(demo, "conv_2", 1, digit)
    print(
        f"accentuate one demo digit (conv_2 channel 1, {result.steps} steps): median "
        f"{median:.2f} s, first call {first:.2f} s; activation {result.before:.3f} -> "
        f"{result.after:.3f} at distance {result.distance:.2f}; goal <= "
        f"{GOALS['accentuate']:.0f} s: {verdict(median, GOALS['accentuate'])}"
    )
    resnet = open_model("resnet18", weights="random", device="cpu")
    shown = legibility_block(
        resnet, dataset, ("layer2", "layer3"), 128, RESNET_STEPS, RESNET_TRAIN, RESNET_REAL
    )
    save_grid(shown, "/tmp/legibility_resnet18.png", zoom=1)


RESNET_STEPS = 128
RESNET_TRAIN = 1000  # reference digits at 128 px, RGB
RESNET_REAL = 200

SECTIONS = {
    "demo": bench_demo,
    "resnet18": bench_resnet18,
    "gpu": bench_gpu,
    "cached": bench_cached,
    "legibility": bench_legibility,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--section", choices=list(SECTIONS), help="run one section only")
    args = parser.parse_args()
    if args.section:
        keep_freed_memory()
        if args.threads:
            torch.set_num_threads(args.threads)
        SECTIONS[args.section](args.repeats)
        return
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    threads = args.threads or torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {threads} intra-op threads, {os.cpu_count()} CPUs "
        f"(load average {load}), {args.repeats} repeats"
    )
    for section in SECTIONS:
        command = [sys.executable, __file__, "--section", section, "--repeats", str(args.repeats)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
