"""Train the demo CNN on cnnlens/demo/MNIST/train with a fixed seed; write its weights.

    python scripts/train_demo_model.py

Writes cnnlens/demo/demo_cnn.safetensors and prints the accuracy on the
1,000 test digits (labels from cnnlens/demo/MNIST/test_labels.csv).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from cnnlens.models import DemoCNN, demo_dataset
from cnnlens.preprocess import to_batch
from cnnlens.registry import DEMO_DATASET_DIR, DEMO_WEIGHTS

SEED = 0
EPOCHS = 15
BATCH = 64


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = demo_dataset()
    labels = DEMO_DATASET_DIR / "test_labels.csv"
    frame = dataset.index if split == "train" else pd.read_csv(labels)
    images = [dataset.load_image(name, "L", split) for name in frame["filename"]]
    return to_batch(images), torch.tensor(frame["label"].to_numpy(), dtype=torch.long)


def shift(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translations of up to 2 pixels, the cheapest augmentation that helps here."""
    padded = F.pad(batch, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + 28, dx : dx + 28]


def accuracy(model: DemoCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        return (model(images).argmax(1) == labels).float().mean().item()


def main() -> None:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    train_x, train_y = load_split("train")
    test_x, test_y = load_split("test")
    model = DemoCNN()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = EPOCHS * ((len(train_x) + BATCH - 1) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            loss = F.cross_entropy(model(shift(train_x[idx], generator)), train_y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        print(f"epoch {epoch + 1}: test accuracy {accuracy(model, test_x, test_y):.4f}")
    DEMO_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(DEMO_WEIGHTS))
    final = accuracy(model, test_x, test_y)
    print(f"trained in {time.perf_counter() - start:.0f} s; test accuracy {final:.4f}")
    print(f"wrote {DEMO_WEIGHTS} ({DEMO_WEIGHTS.stat().st_size / 1e6:.2f} MB)")
    np.testing.assert_array_less(0.97, final)


if __name__ == "__main__":
    main()
