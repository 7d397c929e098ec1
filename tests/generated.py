"""Generated test data: dataset folders in both layouts, written on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def random_image(
    rng: np.random.RandomState, size: int | tuple[int, int], mode: str = "L"
) -> Image.Image:
    """Random pixels: ``size`` is a side or ``(height, width)``; ``mode`` is "L" or "RGB"."""
    height, width = (size, size) if isinstance(size, int) else size
    shape = (height, width) if mode == "L" else (height, width, 3)
    return Image.fromarray(rng.randint(0, 256, shape, dtype=np.uint8), mode=mode)


def write_dataset(
    root: Path,
    labels: list[int],
    size: int | tuple[int, int] = 8,
    seed: int = 0,
    mode: str = "L",
) -> Path:
    """Write a dataset folder in the original recipe's layout with random images (PNG)."""
    rng = np.random.RandomState(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    lines = ["filename,label"]
    for i, label in enumerate(labels):
        random_image(rng, size, mode).save(root / "train" / f"img_{i}.png")
        lines.append(f"img_{i}.png,{label}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def write_image_folder(
    root: Path,
    labels: list[str | int],
    size: int | tuple[int, int] = 8,
    seed: int = 0,
    mode: str = "L",
    under_train: bool = False,
) -> Path:
    """Write one subfolder per label (optionally inside ``train/``): ``<label>/img_<i>.png``."""
    rng = np.random.RandomState(seed)
    folder = root / "train" if under_train else root
    for i, label in enumerate(labels):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        random_image(rng, size, mode).save(folder / str(label) / f"img_{i}.png")
    return root
