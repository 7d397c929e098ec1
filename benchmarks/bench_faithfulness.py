"""Faithfulness over a dataset and the sanity check, timed on the demo's digits.

    python benchmarks/bench_faithfulness.py [--images 1000] [--table-images 200]
        [--sanity-images 20]

Prints, each with a fresh results store:

- **Grad-CAM over the digits**: deletion and insertion areas of ``--images`` digits
  through ``FaithfulnessSpec`` (as the dashboard runs it, with progress), its time
  and images/s. Goal: 1,000 digits in at most 60 s on a 2-core CPU.
- **Cancel**: how long after a stop request the same run ends (``Cancelled``).
- **Per method**: mean deletion and insertion areas of a few fast methods on
  ``--table-images`` digits, and :func:`most_faithful`'s sentence.
- **Sanity**: the time of one ``sanity_check`` cascade for Grad-CAM on one digit
  (median of 5), and for every method the rank correlation left once the whole
  network is random, over ``--sanity-images`` digits (median and share ≥ 0.5).

Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cnnlens.attribution import METHODS  # noqa: E402
from cnnlens.faithfulness_metrics import FaithfulnessSpec, most_faithful  # noqa: E402
from cnnlens.models import demo_dataset, open_model  # noqa: E402
from cnnlens.results import Cancelled  # noqa: E402
from cnnlens.sanity import SANITY_THRESHOLD, sanity_check  # noqa: E402
from cnnlens.store import ResultStore  # noqa: E402

GOAL_S = 60.0
TABLE_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "saliency")


def fresh_store() -> ResultStore:
    return ResultStore(Path(tempfile.mkdtemp(prefix="bench_faithfulness_")))


def whole_run(loaded, dataset, images: int) -> None:
    """Grad-CAM deletion and insertion over the digits, with progress, against the goal."""
    reports: list[tuple[int, int]] = []
    spec = FaithfulnessSpec(loaded, dataset, "gradcam", images=images)
    start, cpu = time.perf_counter(), time.process_time()
    result = fresh_store().run(spec, on_progress=lambda *p: reports.append(p))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    verdict = "meets" if seconds <= GOAL_S * images / 1000 else "MISSES"
    print(
        f"Grad-CAM ({result.layer}) deletion + insertion over {len(result):,} digits: "
        f"{seconds:.1f} s ({cpu:.1f} s of CPU), {len(result) / seconds:.0f} images/s, "
        f"{len(reports)} progress reports; goal <= {GOAL_S * images / 1000:.0f} s: {verdict}",
        flush=True,
    )
    print(f"  mean deletion {result.mean_deletion:.3f}, insertion {result.mean_insertion:.3f}")


def cancel_latency(loaded, dataset, images: int, after_s: float = 2.0) -> None:
    """Seconds from a stop request to the run's end."""
    asked = threading.Event()
    threading.Timer(after_s, asked.set).start()
    spec = FaithfulnessSpec(loaded, dataset, "gradcam", images=images)
    start = time.perf_counter()
    try:
        fresh_store().run(spec, should_stop=asked.is_set)
        print("Cancel: the run finished before the stop was asked", flush=True)
    except Cancelled:
        late = time.perf_counter() - start - after_s
        print(f"Cancel asked at {after_s:.0f} s: stopped {late * 1000:.0f} ms later", flush=True)


def method_table(loaded, dataset, images: int) -> None:
    """Mean areas per method on the same digits, and the sentence that sums them up."""
    print(f"\nPer method on {images} digits (deletion: lower is better; insertion: higher)")
    print(f"  {'method':22s} {'deletion':>9s} {'insertion':>10s} {'time':>8s}")
    results = {}
    for method in TABLE_METHODS:
        start = time.perf_counter()
        found = fresh_store().run(FaithfulnessSpec(loaded, dataset, method, images=images))
        seconds = time.perf_counter() - start
        results[method] = found
        print(
            f"  {method:22s} {found.mean_deletion:9.3f} {found.mean_insertion:10.3f} "
            f"{seconds:7.1f}s",
            flush=True,
        )
    print(f"  {most_faithful(results)}")


def sanity_timing(loaded, x: torch.Tensor) -> None:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        steps = sanity_check(loaded, x, "gradcam")
        times.append(time.perf_counter() - start)
    print(
        f"\nsanity_check cascade, Grad-CAM, one digit: {len(steps)} steps, "
        f"median {statistics.median(times) * 1000:.0f} ms of 5"
    )


def sanity_table(loaded, dataset, images: int) -> None:
    """Each method's correlation with its trained map once the whole network is random."""
    names = dataset.pick_many(128, images)
    batch = loaded.batch([dataset.load_image(name) for name in names])
    print(f"\nFully randomised (cascade's last step), {images} digits: Spearman of |maps|")
    print(f"  {'method':22s} {'median':>7s} {'mean':>6s} {'>= 0.5':>7s}")
    for method in METHODS:
        last = [
            sanity_check(loaded, batch[i : i + 1], method)[-1].correlation for i in range(images)
        ]
        share = np.mean(np.array(last) >= SANITY_THRESHOLD)
        print(
            f"  {method:22s} {np.median(last):7.2f} {np.mean(last):6.2f} {share:7.0%}", flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--table-images", type=int, default=200)
    parser.add_argument("--sanity-images", type=int, default=20)
    args = parser.parse_args()
    loaded, dataset = open_model("demo"), demo_dataset()
    # Other work on the machine stretches wall times: the load says how much.
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"demo CNN, {torch.get_num_threads()} threads; load average {load}", flush=True)
    whole_run(loaded, dataset, args.images)
    cancel_latency(loaded, dataset, args.images)
    if args.table_images:
        method_table(loaded, dataset, args.table_images)
    sanity_timing(loaded, loaded.batch(dataset.load_image(dataset.pick(128))))
    if args.sanity_images:
        sanity_table(loaded, dataset, args.sanity_images)


if __name__ == "__main__":
    main()
