"""Attribution cost: the eleven methods on a demo digit, and the CAMs of ResNet-18 at 224 px.

    python benchmarks/bench_attribution.py [--repeats 5] [--score-repeats 3] [--threads N]
        [--section demo|resnet18|all]

- demo: every method of :data:`cnnlens.attribution.METHODS` on one demo digit (28×28),
  each and the total. Goal: the total at most 1 s.
- resnet18: ResNet-18 with seeded random weights (nothing is downloaded) on one 224×224
  image: each gradient CAM and Eigen-CAM (goal: at most 0.5 s each); Score-CAM exact
  on the default layer (goal: at most 5 s), beside its floor, the time of as many plain
  forwards as it masks (in batches of the same size, in the same run); and Score-CAM
  with ``max_channels=128``, with the Pearson and Spearman correlation of its map to the
  exact one.

Every call is warmed up once first (oneDNN sets up its kernels); the figures are
medians of the repeats after it. Not a test: machines are noisy; the load average is
printed first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnlens.attribution import CAM_METHODS, METHODS, attribute
from cnnlens.models import demo_dataset, open_model

DEMO_GOAL = 1.0
CAM_GOAL = 0.5
SCORE_CAM_GOAL = 5.0


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """The median seconds of ``repeats`` calls, after one call to warm up."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def verdict(seconds: float, goal: float) -> str:
    return "meets" if seconds <= goal else "MISSES"


def demo_section(repeats: int) -> None:
    loaded, dataset = open_model("demo"), demo_dataset()
    x = loaded.batch(dataset.load_image(dataset.pick(128)))
    print(f"demo CNN, one 28×28 digit, median of {repeats}:")
    total = 0.0
    for method in METHODS:
        seconds = median_seconds(lambda m=method: attribute(loaded, x, m), repeats)
        total += seconds
        print(f"  {method:22s} {seconds * 1000:8.1f} ms")
    print(
        f"  {'total':22s} {total * 1000:8.1f} ms   goal <= {DEMO_GOAL:.0f} s: "
        f"{verdict(total, DEMO_GOAL)}"
    )


def plain_forwards(loaded, x: torch.Tensor, count: int, batch_size: int) -> Callable[[], None]:
    """``count`` forwards of the model on copies of ``x``, in batches: Score-CAM's floor."""
    model = loaded.private_copy.model

    def run() -> None:
        with torch.inference_mode():
            for start in range(0, count, batch_size):
                size = min(batch_size, count - start)
                model(x.expand(size, -1, -1, -1).contiguous(memory_format=torch.channels_last))

    return run


def correlations(found: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """(Pearson, Spearman) of two maps' pixels; Spearman ranks ties by their average."""
    a, b = pd.Series(found.ravel()), pd.Series(exact.ravel())
    return float(a.corr(b)), float(a.corr(b, method="spearman"))


def resnet_section(repeats: int, score_repeats: int) -> None:
    loaded = open_model("resnet18", weights="random")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    print(f"ResNet-18 (random weights, seed 0), one 224×224 image, median of {repeats}:")
    for method in (*CAM_METHODS[:5], "eigencam"):
        seconds = median_seconds(lambda m=method: attribute(loaded, x, m), repeats)
        print(
            f"  {method:22s} {seconds * 1000:8.1f} ms   goal <= {CAM_GOAL} s: "
            f"{verdict(seconds, CAM_GOAL)}"
        )
    totals: list[int] = []
    exact = attribute(loaded, x, "scorecam", progress=lambda done, total: totals.append(total))
    masks = totals[-1]
    print(
        f"Score-CAM on {exact.layer}: {masks} masks (all-zero maps skipped), "
        f"median of {score_repeats}:"
    )
    seconds = median_seconds(lambda: attribute(loaded, x, "scorecam"), score_repeats)
    floor = median_seconds(plain_forwards(loaded, x, masks, 64), score_repeats)
    print(
        f"  {'scorecam exact':22s} {seconds:8.2f} s    goal <= {SCORE_CAM_GOAL:.0f} s: "
        f"{verdict(seconds, SCORE_CAM_GOAL)}"
    )
    print(
        f"  {'floor: plain forwards':22s} {floor:8.2f} s    ({masks} images; "
        f"exact ÷ floor {seconds / floor:.2f})"
    )
    fast = attribute(loaded, x, "scorecam", max_channels=128)
    fast_seconds = median_seconds(
        lambda: attribute(loaded, x, "scorecam", max_channels=128), score_repeats
    )
    pearson, spearman = correlations(fast, exact)
    print(
        f"  {'scorecam 128 channels':22s} {fast_seconds:8.2f} s    to the exact map: "
        f"Pearson {pearson:.3f}, Spearman {spearman:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--score-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--section", choices=["demo", "resnet18", "all"], default="all")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average {load}; {torch.get_num_threads()} torch threads", flush=True)
    if args.section in ("demo", "all"):
        demo_section(args.repeats)
    if args.section in ("resnet18", "all"):
        resnet_section(args.repeats, args.score_repeats)


if __name__ == "__main__":
    main()
