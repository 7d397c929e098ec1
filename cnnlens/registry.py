"""What models the dashboard offers, without importing torch.

The dashboard reads this registry to paint its first page before torch has
loaded; :mod:`cnnlens.models` builds the networks themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEMO_INPUT", "IMAGENET_INPUT", "MODELS", "InputSpec", "ModelInfo", "model_info"]


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
