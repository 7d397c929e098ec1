"""Any model's own layer names: a module's qualified path works everywhere, for every model.

Renamed layers (``conv_1``) exist only where a stack is made of plain layers (VGG, the
demo); a stack of blocks (MobileNet, EfficientNet, SqueezeNet) keeps its qualified names.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn
from torchvision import models

from cnnlens import (
    Layers,
    ablate,
    build_extractor,
    build_lens,
    explain_value,
    layer_names,
    visualize,
)
from cnnlens.borrow import layer_channels
from cnnlens.gradcam import grad_cam

DEPTHWISE = "features.1.block.0.0"  # MobileNetV3-Small's first depthwise conv


def seeded(build: type[nn.Module] | object) -> nn.Module:
    torch.manual_seed(0)
    return build().eval()  # type: ignore[operator]


@pytest.fixture(scope="module")
def mobilenet() -> nn.Module:
    return seeded(models.mobilenet_v3_small)


@pytest.fixture(scope="module")
def efficientnet() -> nn.Module:
    return seeded(models.efficientnet_b0)


def conv_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every Conv2d's output, cloned by a hook that returns None, on a copy of the model."""
    own = copy.deepcopy(model).eval()
    kept: dict[str, torch.Tensor] = {}

    def keep(name: str, module: nn.Module, args: object, output: torch.Tensor) -> None:
        kept.setdefault(name, output.clone())

    for name, module in own.named_modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(partial(keep, name))
    with torch.no_grad():
        own(x.clone())
    return kept


@pytest.mark.parametrize("family", ["mobilenet", "efficientnet"])
def test_every_conv_explained_by_its_path_equals_an_independent_hook(family, request):
    model = request.getfixturevalue(family)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    expected = conv_outputs(model, x)
    assert len(expected) > (50 if family == "efficientnet" else 40)
    layers = Layers(model)
    assert not layers.renamed and layers.names == layers.module_names
    for i, (path, output) in enumerate(expected.items()):
        channel, row, col = i * 7 % output.shape[1], output.shape[2] // 2, output.shape[3] // 2
        e = explain_value(model, path, x, channel, row, col)
        assert e.kind == "conv" and e.layer == path
        assert e.value == float(output[0, channel, row, col]), path
        assert e.products.sum() + e.bias == pytest.approx(e.value, rel=1e-4, abs=1e-5), path


def test_the_issues_depthwise_conv_of_a_plain_mobilenet(mobilenet):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    e = explain_value(mobilenet, DEPTHWISE, x, 0, 5, 5)
    assert e.kind == "conv" and e.input_channels.tolist() == [0]  # depthwise: one channel
    with pytest.raises(TypeError, match="MobileNetV3 has no renamed layers"):
        layer_names(mobilenet)


def test_a_blocks_stack_gets_no_renamed_names_and_unknown_paths_get_close_matches(mobilenet):
    layers = Layers(mobilenet)
    assert not any(name.startswith(("invertedresidual", "conv2dnormactivation")) for name in layers)
    assert layers.path(DEPTHWISE) == DEPTHWISE
    assert layers.module(DEPTHWISE) is mobilenet.features[1].block[0][0]
    with pytest.raises(
        ValueError, match=r"Unknown module 'features\.1\.block\.0\.9'\. Close matches: "
    ):
        layers.check("features.1.block.0.9")
    with pytest.raises(ValueError, match=r"Unknown module 'conv_1'\."):
        explain_value(mobilenet, "conv_1", torch.zeros(1, 3, 32, 32), 0)


def test_vgg16_accepts_conv_1_and_its_path_with_the_same_values():
    features = seeded(models.vgg16).features
    layers = Layers(features)
    assert layers.renamed and layers.names[:2] == ["conv_1", "relu_1"]
    assert layers.path("conv_1") == "0" and layers.module("conv_1") is features[0]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    maps = build_lens(features, ["conv_1", "0"], channels_last=False)(x)
    assert torch.equal(maps["conv_1"], maps["0"]) and (maps["0"] < 0).any()
    named = explain_value(features, "conv_1", x, 5, 16, 16)
    path = explain_value(features, "0", x, 5, 16, 16)
    assert named.value == path.value == float(maps["0"][0, 5, 16, 16])
    with pytest.raises(ValueError, match=r"Unknown layer 'conv_99'\. Valid layers: conv_1, relu_1"):
        layers.check("conv_99")


def test_every_function_takes_a_path_of_a_plain_module(mobilenet):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with build_extractor(mobilenet, DEPTHWISE, channels_last=False) as extract:
        maps = extract(x)[DEPTHWISE]
    with torch.no_grad():
        expected = mobilenet.features[1].block[0][0](mobilenet.features[0](x))
    torch.testing.assert_close(maps, expected)
    assert layer_channels(mobilenet, DEPTHWISE, size=32) == list(range(16))
    before, after = ablate(mobilenet, x, DEPTHWISE, 3)
    assert before.shape == after.shape == (2, 1000) and not torch.equal(before, after)
    image = visualize(mobilenet, DEPTHWISE, [3], size=16, steps=2)
    assert image.shape == (1, 3, 16, 16)


def test_every_function_takes_both_names_of_a_loaded_model(demo):
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    maps = demo.extractor(["features.2", "conv_2"])(x)
    assert torch.equal(maps["features.2"], maps["conv_2"])
    assert demo.layers.check(["features.2"]) == ("features.2",)
    cam_named = grad_cam(demo, x, "relu_2", 3)
    cam_path = grad_cam(demo, x, "features.3", 3)
    assert (cam_named == cam_path).all()
    before, after = ablate(demo, x, "features.2", 0)
    assert torch.equal((before, after)[1], ablate(demo, x, "conv_2", 0)[1])
    assert explain_value(demo, "features.2", x, 1, 4, 4).value == float(maps["conv_2"][0, 1, 4, 4])
    assert layer_channels(demo, "features.2") == list(range(32))
    # A classifier layer has a path too, outside the renamed stack.
    with torch.no_grad():
        hidden = demo.model.classifier[:3](
            demo.model.features(x.to(memory_format=torch.channels_last))
        )
    torch.testing.assert_close(demo.extractor("classifier.2")(x)["classifier.2"], hidden)
