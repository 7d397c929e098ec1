"""The model registry: the embedded demo CNN, weights loading and preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from cnnlens.data import Dataset, load_dataset, to_mode
from cnnlens.registry import DEMO_DATASET_DIR, DEMO_INPUT, InputSpec, model_info

__all__ = [
    "DEMO_DATASET_DIR",
    "DEMO_WEIGHTS",
    "DemoCNN",
    "demo_dataset",
    "demo_model",
    "load_model",
    "load_weights",
    "pick_device",
    "to_batch",
]

_ROOT = Path(__file__).resolve().parent
DEMO_WEIGHTS = _ROOT / "weights" / "demo_cnn.safetensors"


class DemoCNN(nn.Module):
    """A small VGG-like CNN for 28×28 digits: a sequential ``features`` and a classifier.

    Like VGG, each conv is followed by an in-place ReLU (no batch norm), so a lens
    on a conv layer must keep its pre-ReLU values apart. Takes N×1×28×28 pixel
    values in [0, 1] as they are: it was trained on them, so callers normalise
    nothing. Returns N×10 class logits.
    """

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(1, 32),
            *block(32, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_model(name: str, device: str | torch.device = "cpu") -> nn.Module:
    """Build a registered model with its weights, in eval mode.

    Raises:
        ValueError: for an unknown name.
    """
    model_info(name)
    if name == "vgg16":
        from torchvision.models import vgg16

        torch.manual_seed(0)  # the same random weights in every process
        return vgg16().features.eval().to(device)
    return demo_model(device)


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA when available (or when asked for and present), CPU otherwise.

    Raises:
        ValueError: if ``preferred`` names a device this machine does not have.
    """
    if preferred in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preferred == "cpu":
        return torch.device("cpu")
    if preferred.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("CUDA was asked for, but this machine has no usable GPU; use 'cpu'.")
        return torch.device(preferred)
    raise ValueError(f"Unknown device {preferred!r}: use 'auto', 'cpu' or 'cuda'.")


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state_dict safely: safetensors, or a torch file with ``weights_only=True``.

    Raises:
        ValueError: if the file is missing, unreadable, carries code, or is not a state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No weights file at {path}.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # every loader failure becomes one clear sentence
        raise ValueError(
            f"{path.name} could not be loaded as weights: {str(error).splitlines()[0]} "
            "Only plain state_dict files (.safetensors, .pt, .pth) without code are accepted."
        ) from error
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{path.name} is not a state_dict (a mapping of names to tensors). Save weights "
            "with torch.save(model.state_dict(), path)."
        )
    return state


def demo_model(device: str | torch.device = "cpu") -> DemoCNN:
    """The embedded demo CNN, trained on the demo digits, in eval mode."""
    model = DemoCNN()
    model.load_state_dict(load_weights(DEMO_WEIGHTS))
    return model.eval().to(device)


def demo_dataset() -> Dataset:
    """The embedded demo dataset: 4,000 labelled MNIST digits and 1,000 test digits."""
    return load_dataset(DEMO_DATASET_DIR)


def to_batch(images: list[Image.Image] | Image.Image, spec: InputSpec = DEMO_INPUT) -> torch.Tensor:
    """Turn Pillow images into an N×C×H×W float batch for a model.

    Each image is converted to the model's mode, resized to its input size and
    scaled to [0, 1], then normalised when the spec has a mean and std.
    """
    if isinstance(images, Image.Image):
        images = [images]
    height, width = spec.size
    arrays = []
    for image in images:
        image = to_mode(image, spec.mode)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    batch = torch.from_numpy(np.stack(arrays))
    if spec.mean is not None and spec.std is not None:
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(spec.std).view(1, -1, 1, 1)
        batch = (batch - mean) / std
    return batch
