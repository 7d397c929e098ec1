"""Memory of looking at many layer sets of one model: one shared private copy against a copy
per target set (what cnnlens did before its extractors shared one copy).

    python benchmarks/bench_memory.py [--model resnet50] [--sets 10] [--clicks 30]

Each scenario runs in a fresh Python process, so one's memory never hides in
another's. A scenario opens the model (seeded random weights: nothing is
downloaded), reads its resident memory (RSS), then builds an extractor for each
of ``--sets`` different target sets, keeps them all (as a server's cache would)
and runs each once on a 224-pixel image; the RSS it added is printed beside the
model's parameter bytes. The click-through scenarios build and drop one
single-layer extractor per click with Python's garbage collector off, as the
dashboard runs (``runner.postScriptGC = false``), to show what a dropped
extractor leaves behind. Not a test: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCENARIO = r"""
import gc, json, sys
import torch
from cnnlens.extractor import build_extractor
from cnnlens.models import open_model

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))

kind, name, sets, clicks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
loaded = open_model(name, weights="random")
x = torch.randn(1, *loaded.spec.shape)
with torch.inference_mode():
    loaded.model(x)  # allocator warm-up, so the first extractor does not pay for it
kinds = ("Conv2d", "Bottleneck", "BasicBlock", "Sequential")
names = [n for n in loaded.layer_names() if type(loaded.layers.module(n)).__name__ in kinds]
params = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
gc.collect()
gc.disable()
before = rss()
if kind.startswith("sets"):
    step = max(1, len(names) // (sets + 1))
    chosen = [[names[(i + 1) * step], names[(i + 1) * step // 2]] for i in range(sets)]
    keep = []
    for targets in chosen:
        shared = kind == "sets-shared"
        extract = loaded.extractor(targets) if shared else build_extractor(loaded.model, targets)
        extract(x)
        keep.append(extract)
else:
    for i in range(clicks):
        target = names[(i * 7) % len(names)]
        shared = kind == "clicks-shared"
        extract = loaded.extractor([target]) if shared else build_extractor(loaded.model, [target])
        extract(x)
        del extract
after = rss()
print(json.dumps({"added": after - before, "params": params}))
"""

SCENARIOS = {
    "sets-shared": "{sets} target sets, one shared private copy",
    "sets-copies": "{sets} target sets, a copy per set",
    "clicks-shared": "{clicks} clicks, one shared private copy, gc off",
    "clicks-copies": "{clicks} clicks, a copy per click, gc off",
}


def run(kind: str, model: str, sets: int, clicks: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO, kind, model, str(sets), str(clicks)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--sets", type=int, default=10)
    parser.add_argument("--clicks", type=int, default=30)
    args = parser.parse_args()
    print(f"{args.model}: RSS added after opening the model (MB), and its ratio to the parameters")
    for kind, title in SCENARIOS.items():
        found = run(kind, args.model, args.sets, args.clicks)
        mb = found["added"] / 2**20
        ratio = found["added"] / found["params"]
        print(
            f"  {title.format(sets=args.sets, clicks=args.clicks):<48} "
            f"{mb:8.0f} MB  {ratio:5.2f}× the {found['params'] / 2**20:.0f} MB of parameters"
        )


if __name__ == "__main__":
    main()
