"""What the dashboard offers: its models and the demo dataset, without heavy imports.

The dashboard reads this registry to paint its first page before torch (or
pandas) has loaded; :mod:`cnnlens.models` builds the networks themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEMO_DATASET_DIR = Path(__file__).resolve().parent.parent / "datasets" / "MNIST"
"""The embedded demo dataset: 4,000 labelled MNIST digits and 1,000 test digits."""

SEED = 128
"""The seed recipe's seed: ``np.random.RandomState(128).choice(train.filename)``."""

__all__ = [
    "DEMO_DATASET_DIR",
    "DEMO_INPUT",
    "IMAGENET_INPUT",
    "MODELS",
    "SEED",
    "InputSpec",
    "ModelInfo",
    "model_info",
]


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: image mode, size and value scaling."""

    mode: str = "L"
    size: tuple[int, int] = (28, 28)  # height, width
    mean: tuple[float, ...] | None = None  # per-channel normalisation after scaling to [0, 1]
    std: tuple[float, ...] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one input."""
        return (1 if self.mode == "L" else 3, *self.size)


DEMO_INPUT = InputSpec(mode="L", size=(28, 28))
IMAGENET_INPUT = InputSpec(
    mode="RGB", size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


@dataclass(frozen=True)
class ModelInfo:
    """A model the dashboard offers: its title, input and class names."""

    name: str
    title: str
    spec: InputSpec
    classes: tuple[str, ...] | None = None
    note: str | None = None  # shown as a banner, e.g. for random weights


MODELS: dict[str, ModelInfo] = {
    "demo": ModelInfo(
        name="demo",
        title="Demo CNN (MNIST digits)",
        spec=DEMO_INPUT,
        classes=tuple(str(digit) for digit in range(10)),
    ),
    "vgg16": ModelInfo(
        name="vgg16",
        title="VGG16 conv layers (random weights)",
        spec=IMAGENET_INPUT,
        note="Random weights: feature maps show structure, not learned features.",
    ),
}


def model_info(name: str) -> ModelInfo:
    """The registry entry of a model.

    Raises:
        ValueError: for a name that is not in :data:`MODELS`.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Choose one of: {', '.join(MODELS)}.")
    return MODELS[name]
