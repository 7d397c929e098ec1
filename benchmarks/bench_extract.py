"""Feature extraction cost: the lens and the extractor against a plain forward and FX.

    python benchmarks/bench_extract.py [--repeats 9] [--section vgg|demo|resnet18]

Every method runs interleaved in one process, repeat after repeat, and the
script prints medians and ratios to cnnlens's method: the ratio of the medians,
and the median of the ratios of runs made moments apart, which slow spells of a
shared machine disturb less. Not a test: machines are noisy, so read the ratios,
not the seconds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18, vgg16
from torchvision.models.feature_extraction import create_feature_extractor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnlens import build_lens, demo_model, layer_names
from cnnlens.extractor import build_extractor
from cnnlens.malloc import keep_freed_memory


def plain_forward(
    layers: nn.Module, channels_last: bool, no_grad: bool = False
) -> Callable[[torch.Tensor], object]:
    """A bare forward of the truncated layers, on its own copy (conversion is in place).

    ``no_grad`` runs it as the extractor does, which keeps version counters that
    ``inference_mode`` drops.
    """
    layers = copy.deepcopy(layers).eval()
    if channels_last:
        layers = layers.to(memory_format=torch.channels_last)
    grad_mode = torch.no_grad if no_grad else torch.inference_mode

    def run(x: torch.Tensor) -> torch.Tensor:
        with grad_mode():
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return layers(x)

    return run


def fx_extractor(
    model: nn.Module, nodes: list[str], channels_last: bool = False
) -> Callable[[torch.Tensor], object]:
    own = copy.deepcopy(model).eval()
    if channels_last:
        own = own.to(memory_format=torch.channels_last)
    extractor = create_feature_extractor(own, {n: n for n in nodes})

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return extractor(x)

    return run


class Timings:
    """Seconds per method, one value per repeat; every repeat ran each method once."""

    def __init__(self, times: dict[str, list[float]]) -> None:
        self.times = times

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, ours: str, other: str | list[str]) -> tuple[float, float]:
        """``ours / other``: the ratio of the medians, and the median of each repeat's ratio.

        With a list, ``other`` is the fastest of them (by median), repeat by repeat. The
        second figure pairs runs made moments apart, so it shrugs off slow spells.
        """
        others = [other] if isinstance(other, str) else other
        rounds = zip(*(self.times[name] for name in others), strict=True)
        paired = [a / min(b) for a, b in zip(self.times[ours], rounds, strict=True)]
        fastest = min(self.median(name) for name in others)
        return self.median(ours) / fastest, statistics.median(paired)


def measure(methods: dict[str, Callable], x: torch.Tensor, repeats: int) -> Timings:
    for run in methods.values():  # warm-up: allocator, kernels, lazy init
        run(x)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            out = run(x)
            times[name].append(time.perf_counter() - start)
            del out  # freed before the next method runs, for every method alike
    return Timings(times)


def report(title: str, timings: Timings, ours: str = "cnnlens lens") -> None:
    short = ours.split()[-1]
    print(f"\n{title}")
    print(f"{'method':<44} {'median ms':>10} {f'{short} / method':>18}")
    for name in timings.times:
        seconds = timings.median(name)
        print(f"{name:<44} {seconds * 1e3:>10.1f} {timings.median(ours) / seconds:>18.2f}")


def goal(label: str, ratio: tuple[float, float], limit: float) -> None:
    medians, paired = ratio
    print(
        f"{label}: {medians:.3f} (ratio of medians), {paired:.3f} (median of paired "
        f"ratios); goal <= {limit:.2f}"
    )


def bench_vgg(repeats: int) -> None:
    features = vgg16().features.eval()  # random weights: timing only
    targets = ["conv_1", "conv_5", "conv_8"]  # features[0], [10], [17]
    x = torch.randn(8, 3, 224, 224)
    vgg = measure(
        {
            "cnnlens lens": build_lens(features, targets),
            "plain forward to conv_8, NCHW": plain_forward(features[:18], False),
            "plain forward to conv_8, channels_last": plain_forward(features[:18], True),
            "torchvision create_feature_extractor": fx_extractor(features, ["0", "10", "17"]),
        },
        x,
        repeats,
    )
    report("vgg16().features, batch 8×3×224×224, targets conv_1, conv_5, conv_8", vgg)
    plains = ["plain forward to conv_8, NCHW", "plain forward to conv_8, channels_last"]
    goal("lens / fastest plain forward", vgg.ratio("cnnlens lens", plains), 1.05)
    fx = "torchvision create_feature_extractor"
    goal("lens / create_feature_extractor", vgg.ratio("cnnlens lens", fx), 0.80)


def bench_demo(repeats: int) -> None:
    model = demo_model()
    names = layer_names(model)
    convs = [n for n in names if n.startswith("conv")]
    nodes = [f"features.{names.index(n)}" for n in convs]
    deepest = names.index(convs[-1]) + 1
    x = torch.rand(256, 1, 28, 28)
    demo = measure(
        {
            "cnnlens lens": build_lens(model, convs),
            "plain forward to conv_4, channels_last": plain_forward(model.features[:deepest], True),
            "torchvision create_feature_extractor": fx_extractor(model, nodes),
        },
        x,
        repeats,
    )
    report(f"demo CNN, batch 256×1×28×28, targets {', '.join(convs)}", demo)
    plain = "plain forward to conv_4, channels_last"
    goal("lens / plain forward to conv_4", demo.ratio("cnnlens lens", plain), 1.05)
    fx = "torchvision create_feature_extractor"
    goal("lens / create_feature_extractor", demo.ratio("cnnlens lens", fx), 0.75)


def bench_resnet18(repeats: int) -> None:
    model = resnet18().eval()  # random weights: timing only
    stem = nn.Sequential(
        model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2
    )
    x = torch.randn(8, 3, 224, 224)
    medians = measure(
        {
            "cnnlens extractor": build_extractor(model, ["layer1", "layer2"]),
            "plain forward to layer2, NCHW": plain_forward(stem, False),
            "plain forward to layer2, channels_last": plain_forward(stem, True),
            "same, no_grad instead of inference_mode": plain_forward(stem, True, no_grad=True),
            "create_feature_extractor, channels_last": fx_extractor(
                model, ["layer1", "layer2"], channels_last=True
            ),
        },
        x,
        repeats,
    )
    report("resnet18, batch 8×3×224×224, targets layer1, layer2", medians, "cnnlens extractor")
    ours = "cnnlens extractor"
    plains = ["plain forward to layer2, NCHW", "plain forward to layer2, channels_last"]
    goal("extractor / fastest plain forward", medians.ratio(ours, plains), 1.05)
    fx = "create_feature_extractor, channels_last"
    goal("extractor / create_feature_extractor", medians.ratio(ours, fx), 1.00)


SECTIONS = {"vgg": bench_vgg, "demo": bench_demo, "resnet18": bench_resnet18}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats (at least 7)")
    parser.add_argument("--section", choices=list(SECTIONS), help="run one section only")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="tune glibc as `cnnlens extract` does, so freed maps are reused, not faulted in",
    )
    args = parser.parse_args()
    repeats = max(args.repeats, 7)
    if args.section:
        if args.keep_freed_memory:
            keep_freed_memory()
        torch.manual_seed(0)
        SECTIONS[args.section](repeats)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {repeats} repeats")
    # Each section in a fresh process: VGG's gigabytes of allocations would otherwise
    # leave the allocator in a state that changes the demo's timings. Even so, whether
    # glibc reuses or returns the memory of the maps a call hands back varies from
    # process to process, and each page faulted in again costs about a microsecond
    # here: run the script more than once, or with --keep-freed-memory to take the
    # allocator out of the comparison.
    for section in SECTIONS:
        command = [sys.executable, __file__, "--section", section, "--repeats", str(repeats)]
        if args.keep_freed_memory:
            command.append("--keep-freed-memory")
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
