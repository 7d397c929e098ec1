"""Feature extraction cost: the lens and the extractor against a plain forward and FX.

    python benchmarks/bench_extract.py [--repeats 9] [--section vgg|demo|resnet18]

Every method runs interleaved in one process, repeat after repeat, and the
script prints medians and ratios to cnnlens's method. Not a test: machines are
noisy, so read the ratios, not the seconds.
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


def measure(methods: dict[str, Callable], x: torch.Tensor, repeats: int) -> dict[str, float]:
    for run in methods.values():  # warm-up: allocator, kernels, lazy init
        run(x)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, medians: dict[str, float], ours: str = "cnnlens lens") -> None:
    short = ours.split()[-1]
    print(f"\n{title}")
    print(f"{'method':<44} {'median ms':>10} {f'{short} / method':>18}")
    for name, seconds in medians.items():
        print(f"{name:<44} {seconds * 1e3:>10.1f} {medians[ours] / seconds:>18.2f}")


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
    fastest = min(
        vgg["plain forward to conv_8, NCHW"], vgg["plain forward to conv_8, channels_last"]
    )
    print(f"lens / fastest plain forward: {vgg['cnnlens lens'] / fastest:.2f} (goal <= 1.05)")
    print(
        "lens / create_feature_extractor: "
        f"{vgg['cnnlens lens'] / vgg['torchvision create_feature_extractor']:.2f} (goal <= 0.80)"
    )


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
    print(
        "lens / create_feature_extractor: "
        f"{demo['cnnlens lens'] / demo['torchvision create_feature_extractor']:.2f} (goal <= 0.75)"
    )


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
    ours = medians["cnnlens extractor"]
    fastest = min(
        medians["plain forward to layer2, NCHW"], medians["plain forward to layer2, channels_last"]
    )
    print(f"extractor / fastest plain forward: {ours / fastest:.2f} (goal <= 1.05)")
    fx = medians["create_feature_extractor, channels_last"]
    print(f"extractor / create_feature_extractor: {ours / fx:.2f} (goal <= 1.00)")


SECTIONS = {"vgg": bench_vgg, "demo": bench_demo, "resnet18": bench_resnet18}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats (at least 7)")
    parser.add_argument("--section", choices=list(SECTIONS), help="run one section only")
    args = parser.parse_args()
    repeats = max(args.repeats, 7)
    if args.section:
        torch.manual_seed(0)
        SECTIONS[args.section](repeats)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {repeats} repeats")
    # Each section in a fresh process: VGG's gigabytes of allocations would otherwise
    # leave the allocator in a state that changes the demo's timings.
    for section in SECTIONS:
        command = [sys.executable, __file__, "--section", section, "--repeats", str(repeats)]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
