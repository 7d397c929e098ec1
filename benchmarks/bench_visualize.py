"""Feature visualization cost: the demo's atlas, one ResNet-18 channel, GPU batching, a cached tile.

    python benchmarks/bench_visualize.py [--repeats 3] [--threads N]
        [--section demo|resnet18|gpu|cached]

- demo: every channel of the demo CNN's conv_2 (32) at 28×28, 256 steps, one
  batched optimisation; and every channel of conv_4 (64) for comparison.
  Goal (issue 16): at most 10 s on a 2-core CPU.
- resnet18: one channel of ResNet-18's layer3 (random weights) at 128×128, 256
  steps. Goal: at most 30 s on CPU.
- gpu: on CUDA only, 64 channels of layer3 in one batch against one channel.
  Goal: at most 3× the time.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnlens.feature_visualization import ChannelImagesSpec, visualize
from cnnlens.malloc import keep_freed_memory
from cnnlens.models import open_model
from cnnlens.store import ResultStore

GOALS = {"demo": 10.0, "resnet18": 30.0, "gpu": 3.0, "cached": 1.0}


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


SECTIONS = {
    "demo": bench_demo,
    "resnet18": bench_resnet18,
    "gpu": bench_gpu,
    "cached": bench_cached,
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
