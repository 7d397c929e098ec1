"""Generated test data: datasets in the seed's layout, written on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_dataset(root: Path, labels: list[int], size: int = 8, seed: int = 0) -> Path:
    """Write a dataset folder in the seed's layout with random grayscale images."""
    rng = np.random.RandomState(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    lines = ["filename,label"]
    for i, label in enumerate(labels):
        pixels = rng.randint(0, 256, (size, size), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(root / "train" / f"img_{i}.png")
        lines.append(f"img_{i}.png,{label}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root
