"""Relevance-ranked examples over the demo's 4,000 digits: the relevance pass beside the layer
statistics pass, and how far the two rankings agree.

    python benchmarks/bench_relevance.py [--layer conv_4] [--repeats 3] [--batch-size 256]

Each repeat runs, interleaved in this process, the layer-statistics pass
(:class:`cnnlens.insights.LayerStatsSpec`) and the relevance pass
(:class:`cnnlens.relevance.RelevanceSpec`) for the same layer, each through a fresh
:class:`cnnlens.store.ResultStore` in a temporary folder, so both are computed and
stored as the dashboard would. It prints the median time, images per second and the
ratio of the two, then, for channels 0-7 of the layer and of the activation after it,
the overlap of the top-9 activation-ranked and relevance-ranked images and Spearman's
rho over all 4,000 digits between each channel's highest activation and its relevance.
Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cnnlens.insights import LayerStats, LayerStatsSpec  # noqa: E402
from cnnlens.models import demo_dataset, open_model  # noqa: E402
from cnnlens.relevance import ChannelRelevance, RelevanceSpec, rank_agreement  # noqa: E402
from cnnlens.store import ResultStore  # noqa: E402


def timed(spec: object) -> tuple[float, object]:
    """Seconds to compute and store a spec in an empty store, and its result."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = ResultStore(Path(folder)).run(spec)
        return time.perf_counter() - start, result


def agreement(layer: str, stats: LayerStats, relevance: ChannelRelevance, channels: range) -> None:
    """One line per channel: top-9 overlap and Spearman's rho."""
    print(f"\n{layer}: activation (max) ranking against relevance ranking, 4,000 digits")
    print("channel  top-9 overlap  spearman")
    for channel in channels:
        found = rank_agreement(stats, relevance, channel, k=9)
        dead = "  (relevance 0 for every digit: the top lists are dataset order)"
        note = dead if not relevance.relevance[:, channel].any() else ""
        print(f"{channel:>7}  {found.overlap:>9} of 9  {found.spearman:>8.3f}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="conv_4")
    parser.add_argument("--after", default="relu_4", help="the activation after the layer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    loaded, digits = open_model("demo"), demo_dataset()
    options = {"batch_size": args.batch_size}
    times: dict[str, list[float]] = {"statistics": [], "relevance": []}
    results: dict[str, object] = {}
    timed(RelevanceSpec(loaded, digits, args.layer, **options))  # warm: the copy, the files
    for _ in range(args.repeats):
        for name, spec in (
            ("statistics", LayerStatsSpec(loaded, digits, args.layer, **options)),
            ("relevance", RelevanceSpec(loaded, digits, args.layer, **options)),
        ):
            seconds, results[name] = timed(spec)
            times[name].append(seconds)
    images = len(results["relevance"])
    print(f"{args.layer}, {images:,} digits, batch {args.batch_size}, median of {args.repeats}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>10}: {median:6.2f} s  {images / median:8,.0f} images/s")
    ratio = statistics.median(times["relevance"]) / statistics.median(times["statistics"])
    print(f"relevance / statistics: {ratio:.2f}×")
    channels = range(8)
    agreement(args.layer, results["statistics"], results["relevance"], channels)
    after_stats = timed(LayerStatsSpec(loaded, digits, args.after, **options))[1]
    after_relevance = timed(RelevanceSpec(loaded, digits, args.after, **options))[1]
    agreement(args.after, after_stats, after_relevance, channels)


if __name__ == "__main__":
    main()
