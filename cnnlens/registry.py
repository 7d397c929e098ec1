"""What the dashboard offers: its models and the demo dataset, without heavy imports.

The dashboard reads this registry to paint its first page before torch (or
pandas) has loaded; :mod:`cnnlens.models` builds the networks themselves. The
torchvision entries are written out here, checked against
``torchvision.models.list_models()`` and each model's default weights by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

_DEMO_DIR = Path(__file__).resolve().parent / "demo"  # inside the package, so a wheel ships it

DEMO_DATASET_DIR = _DEMO_DIR / "MNIST"
"""The embedded demo dataset: 4,000 labelled MNIST digits and 1,000 test digits."""

DEMO_WEIGHTS = _DEMO_DIR / "demo_cnn.safetensors"
"""The demo CNN's trained weights (``scripts/train_demo_model.py`` writes them)."""

SEED = 128
"""The original recipe's random seed: ``np.random.RandomState(128).choice(train.filename)``."""

RANDOM_WEIGHTS_NOTE = "Random weights: feature maps show structure, not learned features."

__all__ = [
    "DEMO_DATASET_DIR",
    "DEMO_INPUT",
    "DEMO_WEIGHTS",
    "MODELS",
    "RANDOM_WEIGHTS_NOTE",
    "SEED",
    "InputSpec",
    "ModelInfo",
    "default_weights",
    "model_groups",
    "model_info",
]


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: image mode, size, resizing and value scaling.

    With ``resize`` set, an image's shorter side is first resized to it and the
    centre ``size`` cropped out, as torchvision's ``ImageClassification``
    transforms do; without it, the image is resized to ``size`` as a whole.
    """

    mode: str = "L"
    size: tuple[int, int] = (28, 28)  # height, width
    mean: tuple[float, ...] | None = None  # per-channel normalisation after scaling to [0, 1]
    std: tuple[float, ...] | None = None
    resize: int | None = None  # shorter side before the centre crop to ``size``
    interpolation: str = "bilinear"  # or "bicubic"

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one input."""
        return (1 if self.mode == "L" else 3, *self.size)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEMO_INPUT = InputSpec(mode="L", size=(28, 28))


@dataclass(frozen=True)
class ModelInfo:
    """A model the dashboard offers: its title, input and class names.

    Attributes:
        family: ``"demo"`` (the embedded CNN), ``"sequential"`` (a torchvision
            network whose ``.features`` has renamed layers by the rule of
            :mod:`cnnlens.layers`: AlexNet and VGG) or ``"torchvision"`` (any
            other torchvision classifier, such as SqueezeNet, whose ``.features``
            holds Fire blocks: its modules have their qualified names only).
        group: the heading the sidebar lists it under, e.g. ``"ResNet"``.
        weights: the name of torchvision's default pretrained weights, e.g.
            ``"IMAGENET1K_V1"``; ``None`` for the demo.
        parameters: how many parameters the network has.
        classes: class names when known without torch (the demo's digits);
            ImageNet names come with the loaded model.
    """

    name: str
    title: str
    spec: InputSpec
    classes: tuple[str, ...] | None = None
    family: str = "demo"
    group: str = "Demo"
    weights: str | None = None
    parameters: int | None = None

    @property
    def sequential(self) -> bool:
        """Whether the network has renamed layers (``conv_1``, ``relu_1``, ...) besides its
        qualified module names; written out here without torch, and checked by the tests
        against :class:`cnnlens.layers.Layers` of every built network."""
        return self.family in ("demo", "sequential")


# Every classification network of torchvision.models: name, title, default
# weights, parameters, then the default weights' resize (shorter side) and crop.
_TORCHVISION = (
    ("alexnet", "AlexNet", "IMAGENET1K_V1", 61_100_840, 256, 224),
    ("convnext_base", "ConvNeXt Base", "IMAGENET1K_V1", 88_591_464, 232, 224),
    ("convnext_large", "ConvNeXt Large", "IMAGENET1K_V1", 197_767_336, 232, 224),
    ("convnext_small", "ConvNeXt Small", "IMAGENET1K_V1", 50_223_688, 230, 224),
    ("convnext_tiny", "ConvNeXt Tiny", "IMAGENET1K_V1", 28_589_128, 236, 224),
    ("densenet121", "DenseNet-121", "IMAGENET1K_V1", 7_978_856, 256, 224),
    ("densenet161", "DenseNet-161", "IMAGENET1K_V1", 28_681_000, 256, 224),
    ("densenet169", "DenseNet-169", "IMAGENET1K_V1", 14_149_480, 256, 224),
    ("densenet201", "DenseNet-201", "IMAGENET1K_V1", 20_013_928, 256, 224),
    ("efficientnet_b0", "EfficientNet-B0", "IMAGENET1K_V1", 5_288_548, 256, 224),
    ("efficientnet_b1", "EfficientNet-B1", "IMAGENET1K_V2", 7_794_184, 255, 240),
    ("efficientnet_b2", "EfficientNet-B2", "IMAGENET1K_V1", 9_109_994, 288, 288),
    ("efficientnet_b3", "EfficientNet-B3", "IMAGENET1K_V1", 12_233_232, 320, 300),
    ("efficientnet_b4", "EfficientNet-B4", "IMAGENET1K_V1", 19_341_616, 384, 380),
    ("efficientnet_b5", "EfficientNet-B5", "IMAGENET1K_V1", 30_389_784, 456, 456),
    ("efficientnet_b6", "EfficientNet-B6", "IMAGENET1K_V1", 43_040_704, 528, 528),
    ("efficientnet_b7", "EfficientNet-B7", "IMAGENET1K_V1", 66_347_960, 600, 600),
    ("efficientnet_v2_l", "EfficientNetV2-L", "IMAGENET1K_V1", 118_515_272, 480, 480),
    ("efficientnet_v2_m", "EfficientNetV2-M", "IMAGENET1K_V1", 54_139_356, 480, 480),
    ("efficientnet_v2_s", "EfficientNetV2-S", "IMAGENET1K_V1", 21_458_488, 384, 384),
    ("googlenet", "GoogLeNet", "IMAGENET1K_V1", 6_624_904, 256, 224),
    ("inception_v3", "Inception v3", "IMAGENET1K_V1", 27_161_264, 342, 299),
    ("maxvit_t", "MaxViT-T", "IMAGENET1K_V1", 30_919_624, 224, 224),
    ("mnasnet0_5", "MNASNet 0.5", "IMAGENET1K_V1", 2_218_512, 256, 224),
    ("mnasnet0_75", "MNASNet 0.75", "IMAGENET1K_V1", 3_170_208, 232, 224),
    ("mnasnet1_0", "MNASNet 1.0", "IMAGENET1K_V1", 4_383_312, 256, 224),
    ("mnasnet1_3", "MNASNet 1.3", "IMAGENET1K_V1", 6_282_256, 232, 224),
    ("mobilenet_v2", "MobileNetV2", "IMAGENET1K_V2", 3_504_872, 232, 224),
    ("mobilenet_v3_large", "MobileNetV3 Large", "IMAGENET1K_V2", 5_483_032, 232, 224),
    ("mobilenet_v3_small", "MobileNetV3 Small", "IMAGENET1K_V1", 2_542_856, 256, 224),
    ("regnet_x_16gf", "RegNetX-16GF", "IMAGENET1K_V2", 54_278_536, 232, 224),
    ("regnet_x_1_6gf", "RegNetX-1.6GF", "IMAGENET1K_V2", 9_190_136, 232, 224),
    ("regnet_x_32gf", "RegNetX-32GF", "IMAGENET1K_V2", 107_811_560, 232, 224),
    ("regnet_x_3_2gf", "RegNetX-3.2GF", "IMAGENET1K_V2", 15_296_552, 232, 224),
    ("regnet_x_400mf", "RegNetX-400MF", "IMAGENET1K_V2", 5_495_976, 232, 224),
    ("regnet_x_800mf", "RegNetX-800MF", "IMAGENET1K_V2", 7_259_656, 232, 224),
    ("regnet_x_8gf", "RegNetX-8GF", "IMAGENET1K_V2", 39_572_648, 232, 224),
    ("regnet_y_128gf", "RegNetY-128GF", "IMAGENET1K_SWAG_E2E_V1", 644_812_894, 384, 384),
    ("regnet_y_16gf", "RegNetY-16GF", "IMAGENET1K_V2", 83_590_140, 232, 224),
    ("regnet_y_1_6gf", "RegNetY-1.6GF", "IMAGENET1K_V2", 11_202_430, 232, 224),
    ("regnet_y_32gf", "RegNetY-32GF", "IMAGENET1K_V2", 145_046_770, 232, 224),
    ("regnet_y_3_2gf", "RegNetY-3.2GF", "IMAGENET1K_V2", 19_436_338, 232, 224),
    ("regnet_y_400mf", "RegNetY-400MF", "IMAGENET1K_V2", 4_344_144, 232, 224),
    ("regnet_y_800mf", "RegNetY-800MF", "IMAGENET1K_V2", 6_432_512, 232, 224),
    ("regnet_y_8gf", "RegNetY-8GF", "IMAGENET1K_V2", 39_381_472, 232, 224),
    ("resnet101", "ResNet-101", "IMAGENET1K_V2", 44_549_160, 232, 224),
    ("resnet152", "ResNet-152", "IMAGENET1K_V2", 60_192_808, 232, 224),
    ("resnet18", "ResNet-18", "IMAGENET1K_V1", 11_689_512, 256, 224),
    ("resnet34", "ResNet-34", "IMAGENET1K_V1", 21_797_672, 256, 224),
    ("resnet50", "ResNet-50", "IMAGENET1K_V2", 25_557_032, 232, 224),
    ("resnext101_32x8d", "ResNeXt-101 32×8d", "IMAGENET1K_V2", 88_791_336, 232, 224),
    ("resnext101_64x4d", "ResNeXt-101 64×4d", "IMAGENET1K_V1", 83_455_272, 232, 224),
    ("resnext50_32x4d", "ResNeXt-50 32×4d", "IMAGENET1K_V2", 25_028_904, 232, 224),
    ("shufflenet_v2_x0_5", "ShuffleNetV2 0.5×", "IMAGENET1K_V1", 1_366_792, 256, 224),
    ("shufflenet_v2_x1_0", "ShuffleNetV2 1.0×", "IMAGENET1K_V1", 2_278_604, 256, 224),
    ("shufflenet_v2_x1_5", "ShuffleNetV2 1.5×", "IMAGENET1K_V1", 3_503_624, 232, 224),
    ("shufflenet_v2_x2_0", "ShuffleNetV2 2.0×", "IMAGENET1K_V1", 7_393_996, 232, 224),
    ("squeezenet1_0", "SqueezeNet 1.0", "IMAGENET1K_V1", 1_248_424, 256, 224),
    ("squeezenet1_1", "SqueezeNet 1.1", "IMAGENET1K_V1", 1_235_496, 256, 224),
    ("swin_b", "Swin-B", "IMAGENET1K_V1", 87_768_224, 238, 224),
    ("swin_s", "Swin-S", "IMAGENET1K_V1", 49_606_258, 246, 224),
    ("swin_t", "Swin-T", "IMAGENET1K_V1", 28_288_354, 232, 224),
    ("swin_v2_b", "Swin V2-B", "IMAGENET1K_V1", 87_930_848, 272, 256),
    ("swin_v2_s", "Swin V2-S", "IMAGENET1K_V1", 49_737_442, 260, 256),
    ("swin_v2_t", "Swin V2-T", "IMAGENET1K_V1", 28_351_570, 260, 256),
    ("vgg11", "VGG-11", "IMAGENET1K_V1", 132_863_336, 256, 224),
    ("vgg11_bn", "VGG-11 BN", "IMAGENET1K_V1", 132_868_840, 256, 224),
    ("vgg13", "VGG-13", "IMAGENET1K_V1", 133_047_848, 256, 224),
    ("vgg13_bn", "VGG-13 BN", "IMAGENET1K_V1", 133_053_736, 256, 224),
    ("vgg16", "VGG-16", "IMAGENET1K_V1", 138_357_544, 256, 224),
    ("vgg16_bn", "VGG-16 BN", "IMAGENET1K_V1", 138_365_992, 256, 224),
    ("vgg19", "VGG-19", "IMAGENET1K_V1", 143_667_240, 256, 224),
    ("vgg19_bn", "VGG-19 BN", "IMAGENET1K_V1", 143_678_248, 256, 224),
    ("vit_b_16", "ViT-B/16", "IMAGENET1K_V1", 86_567_656, 256, 224),
    ("vit_b_32", "ViT-B/32", "IMAGENET1K_V1", 88_224_232, 256, 224),
    ("vit_h_14", "ViT-H/14", "IMAGENET1K_SWAG_E2E_V1", 633_470_440, 518, 518),
    ("vit_l_16", "ViT-L/16", "IMAGENET1K_V1", 304_326_632, 242, 224),
    ("vit_l_32", "ViT-L/32", "IMAGENET1K_V1", 306_535_400, 256, 224),
    ("wide_resnet101_2", "Wide ResNet-101-2", "IMAGENET1K_V2", 126_886_696, 232, 224),
    ("wide_resnet50_2", "Wide ResNet-50-2", "IMAGENET1K_V2", 68_883_240, 232, 224),
)

_BICUBIC = frozenset(
    {
        *(f"efficientnet_b{i}" for i in (0, 2, 3, 4, 5, 6, 7)),
        "efficientnet_v2_l",
        "maxvit_t",
        "regnet_y_128gf",
        *(f"swin_{size}" for size in ("t", "s", "b", "v2_t", "v2_s", "v2_b")),
        "vit_h_14",
    }
)
_HALF_NORMALISED = frozenset({"efficientnet_v2_l"})  # mean and std 0.5 on every channel
_SEQUENTIAL_PREFIXES = ("alexnet", "vgg")  # cnnlens.layers' rule, checked by the tests

# Name prefix -> sidebar group; the first prefix that matches wins.
_GROUPS = (
    ("alexnet", "AlexNet"),
    ("convnext", "ConvNeXt"),
    ("densenet", "DenseNet"),
    ("efficientnet", "EfficientNet"),
    ("googlenet", "Inception"),
    ("inception", "Inception"),
    ("maxvit", "MaxViT"),
    ("mnasnet", "MNASNet"),
    ("mobilenet", "MobileNet"),
    ("regnet", "RegNet"),
    ("resnet", "ResNet"),
    ("resnext", "ResNet"),
    ("wide_resnet", "ResNet"),
    ("shufflenet", "ShuffleNet"),
    ("squeezenet", "SqueezeNet"),
    ("swin", "Swin Transformer"),
    ("vgg", "VGG"),
    ("vit", "Vision Transformer"),
)


def _torchvision_info(
    name: str, title: str, weights: str, parameters: int, resize: int, crop: int
) -> ModelInfo:
    half = name in _HALF_NORMALISED
    spec = InputSpec(
        mode="RGB",
        size=(crop, crop),
        mean=(0.5, 0.5, 0.5) if half else IMAGENET_MEAN,
        std=(0.5, 0.5, 0.5) if half else IMAGENET_STD,
        resize=resize,
        interpolation="bicubic" if name in _BICUBIC else "bilinear",
    )
    return ModelInfo(
        name=name,
        title=title,
        spec=spec,
        family="sequential" if name.startswith(_SEQUENTIAL_PREFIXES) else "torchvision",
        group=next(group for prefix, group in _GROUPS if name.startswith(prefix)),
        weights=weights,
        parameters=parameters,
    )


MODELS: dict[str, ModelInfo] = {
    "demo": ModelInfo(
        name="demo",
        title="Demo CNN (MNIST digits)",
        spec=DEMO_INPUT,
        classes=tuple(str(digit) for digit in range(10)),
        parameters=467_818,
    ),
    **{row[0]: _torchvision_info(*row) for row in _TORCHVISION},
}


def model_info(name: str) -> ModelInfo:
    """The registry entry of a model.

    Raises:
        ValueError: for a name that is not in :data:`MODELS`.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Choose one of: {', '.join(MODELS)}.")
    return MODELS[name]


def model_groups() -> dict[str, list[str]]:
    """The registered models by sidebar group, the demo first, in registry order."""
    groups: dict[str, list[str]] = {}
    for info in MODELS.values():
        groups.setdefault(info.group, []).append(info.name)
    return groups


def default_weights(name: str) -> WeightsEnum:
    """torchvision's entry for a model's default pretrained weights (``info.weights``):
    its URL, and ``meta`` with the class names and the smallest input.

    Imports torchvision.

    Raises:
        ValueError: for a name that is not in :data:`MODELS`, or the demo, which has none.
    """
    info = model_info(name)
    if info.weights is None:
        raise ValueError(f"{name} has no pretrained weights of torchvision's.")
    from torchvision.models import get_model_weights

    return get_model_weights(name)[info.weights]
