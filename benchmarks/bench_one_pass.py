"""One pass over a dataset for every chosen layer and the model's answers (issue 22).

    python benchmarks/bench_one_pass.py [--model resnet18] [--images 4000] [--layers layer2,layer4]

Times, on the demo's digits (the first ``--images`` of them), with a fresh results
store each time and in this order, one after the other:

- **deepest**: one pass to the deepest chosen layer alone (``LayerStatsSpec``): the floor;
- **one pass**: the statistics of every chosen layer and the answers, as the dashboard
  now asks for them (``LayerStatsSpec(deepest, along=layers, with_predictions=True)``);
- **one per question**: each layer's statistics and the answers as separate passes,
  as the dashboard asked before.

Prints each time and its ratio to the floor. Goal: one pass ≤ 1.2× the floor. The
model runs with seeded random weights (nothing is downloaded). Not a test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cnnlens.data import load_dataset  # noqa: E402
from cnnlens.insights import LayerStatsSpec, PredictionsSpec  # noqa: E402
from cnnlens.models import demo_dataset, open_model  # noqa: E402
from cnnlens.results import Spec  # noqa: E402
from cnnlens.store import ResultStore  # noqa: E402

GOAL = 1.2


def digits(count: int, folder: Path) -> Path:
    """The first ``count`` demo digits as a dataset folder of their own."""
    demo = demo_dataset()
    rows = demo.index.head(count)
    (folder / "train").mkdir(parents=True)
    for name in rows["filename"]:
        shutil.copy(demo.path_of(name), folder / "train" / name)
    pd.DataFrame({"filename": rows["filename"], "label": rows["label"]}).to_csv(
        folder / "train.csv", index=False
    )
    return folder


def timed(specs: list[Spec]) -> float:
    """Seconds to run the specs one after the other on a fresh store."""
    with tempfile.TemporaryDirectory() as folder:
        store = ResultStore(Path(folder))
        start = time.perf_counter()
        for spec in specs:
            store.run(spec)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--layers", default="layer2,layer4")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    loaded = open_model(args.model, weights="random")
    layers = args.layers.split(",")
    with tempfile.TemporaryDirectory() as folder:
        dataset = load_dataset(digits(args.images, Path(folder) / "digits"))
        options = {"batch_size": args.batch_size}
        deepest = loaded.layers.check(layers)[-1]
        cases = {
            "deepest": [LayerStatsSpec(loaded, dataset, deepest, **options)],
            "one pass": [
                LayerStatsSpec(
                    loaded, dataset, deepest, along=tuple(layers), with_predictions=True, **options
                )
            ],
            "one per question": [
                *(LayerStatsSpec(loaded, dataset, layer, **options) for layer in layers),
                PredictionsSpec(loaded, dataset, **options),
            ],
        }
        print(
            f"{args.model} (random weights) over {len(dataset.index):,} digits at "
            f"{loaded.spec.size[0]} px, layers {', '.join(layers)} and the answers; "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )
        seconds = {}
        for name, specs in cases.items():
            seconds[name] = timed(specs)
            print(f"  {name:17s} {seconds[name]:8.1f} s", flush=True)
    floor = seconds["deepest"]
    for name in ("one pass", "one per question"):
        print(f"  {name} ÷ deepest: {seconds[name] / floor:.2f}")
    verdict = "meets" if seconds["one pass"] / floor <= GOAL else "MISSES"
    print(f"  goal: one pass <= {GOAL}x the deepest layer's pass: {verdict}")


if __name__ == "__main__":
    main()
