"""explain_value: every Conv2d kind, the other layer kinds and the class scores, checked
against torch's own outputs taken by independent hooks on a separate copy."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models.vgg import cfgs, make_layers

from cnnlens import explain_value
from cnnlens.explain import CLASS_SCORES, ConvExplanation, ValueExplanation, padded_input
from cnnlens.layers import Layers
from cnnlens.models import LoadedModel, open_model

# Hundreds of small forwards: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return build().eval()


def reference(model: nn.Module, x: torch.Tensor, paths: list[str]) -> dict[str, tuple]:
    """(input, output) of each module's first call, by plain hooks on a separate deep copy.

    The hooks return None, so the forward goes on with the real outputs; clones keep the
    values before any in-place op writes into them.
    """
    twin = copy.deepcopy(model).eval()
    seen: dict[str, tuple] = {}

    def keep(path: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if path not in seen:
                seen[path] = (args[0].detach().clone(), output.detach().clone())

        return hook

    for path in paths:
        twin.get_submodule(path).register_forward_hook(keep(path))
    # A pre-hook keeps an in-place module's input before the module writes into it.
    for path in paths:
        module = twin.get_submodule(path)
        if getattr(module, "inplace", False):

            def pre(module: nn.Module, args: tuple, path: str = path) -> None:
                seen.setdefault("pre:" + path, args[0].detach().clone())

            module.register_forward_pre_hook(pre)
    with torch.no_grad():
        twin(x)
    for path in paths:
        if "pre:" + path in seen:
            seen[path] = (seen.pop("pre:" + path), seen[path][1])
    return seen


def points(shape: torch.Size) -> list[tuple[int, int, int]]:
    """A corner, an edge and the centre of a C×H×W output, each on another channel."""
    channels, height, width = shape
    return [
        (0, 0, 0),
        (channels - 1, height // 2, width - 1),
        (channels // 2, height // 2, width // 2),
    ]


def assert_sums(e: ConvExplanation) -> None:
    """products.sum() + bias == value, within float32 rounding of the terms' size."""
    scale = np.abs(e.products).sum() + abs(e.bias)
    assert abs(e.products.sum() + e.bias - e.value) <= 1e-5 * scale + 1e-6, e
    np.testing.assert_allclose(e.per_input, e.products.sum(axis=(1, 2)))
    np.testing.assert_array_equal(e.products, e.patches.astype(np.float64) * e.kernel)


def assert_convs_explained(
    target: nn.Module | LoadedModel, x: torch.Tensor, expected_convs: int
) -> None:
    """Every conv of the model at the points of :func:`points`, against plain hooks."""
    model, layers = (
        (target.model, target.layers)
        if isinstance(target, LoadedModel)
        else (target, Layers(target))
    )
    convs = [name for name in layers.names if isinstance(layers.module(name), nn.Conv2d)]
    assert len(convs) == expected_convs
    refs = reference(model, x, [layers.path(name) for name in convs])
    for name in convs:
        conv = layers.module(name)
        _, out = refs[layers.path(name)]
        for channel, row, col in points(out.shape[1:]):
            e = explain_value(target, name, x, channel, row, col)
            assert e.kind == "conv"
            expected = float(out[0, channel, row, col])
            assert e.value == pytest.approx(expected, rel=1e-4, abs=1e-5), (name, channel)
            assert_sums(e)
            per_group = conv.in_channels // conv.groups
            assert e.patches.shape == (per_group, *conv.kernel_size)
            assert e.input_channels[0] == channel // (conv.out_channels // conv.groups) * per_group
            np.testing.assert_array_equal(e.kernel, conv.weight[channel].detach().numpy())


def test_demo_convs_loaded_model() -> None:
    """The demo's 4 convs (3×3, padding 1), through open_model's shared private copy."""
    loaded = open_model("demo")
    torch.manual_seed(1)
    x = torch.rand(1, 1, 28, 28)
    assert_convs_explained(loaded, x, expected_convs=4)
    copies = loaded.private_copy
    e = explain_value(loaded, "conv_3", x, 5, 13, 13)
    ref = explain_value(loaded.model, "conv_3", x, 5, 13, 13)
    assert e.value == pytest.approx(ref.value, rel=1e-5, abs=1e-6)
    np.testing.assert_array_equal(e.patches, ref.patches)
    assert not copies.closed


def test_vgg11_convs() -> None:
    """VGG11's 8 convs (3×3, padding 1, in-place ReLUs after each), on 32×32 random input."""
    features = seeded(lambda: make_layers(cfgs["A"]))
    torch.manual_seed(2)
    assert_convs_explained(features, torch.randn(1, 3, 32, 32), expected_convs=8)


def test_resnet18_convs() -> None:
    """ResNet-18's 20 convs: conv1 (7×7, stride 2, padding 3), 16 3×3 convs in the blocks
    (some with stride 2) and 3 1×1 stride-2 downsample convs."""
    model = seeded(lambda: models.resnet18(weights=None))
    torch.manual_seed(3)
    assert_convs_explained(model, torch.randn(1, 3, 32, 32), expected_convs=20)


def test_mobilenet_v3_small_convs() -> None:
    """MobileNetV3-small's 52 convs: 11 depthwise (3×3 and 5×5, stride 1 and 2), 1×1
    pointwise, and the squeeze-excitation 1×1 convs on 1×1 maps; by their qualified
    names, as open_model names them."""
    loaded = open_model("mobilenet_v3_small", weights="random")
    modules = loaded.model.modules()
    depthwise = [m for m in modules if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 11 and all(m.groups == m.in_channels for m in depthwise)
    torch.manual_seed(4)
    assert_convs_explained(loaded, torch.randn(1, 3, 32, 32), expected_convs=52)


# (conv, input size, the layer's padding as (top, bottom, left, right) by hand)
GENERATED = {
    "dilation2-stride2-pad2-reflect": (
        dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=2, dilation=2,
             padding_mode="reflect"),
        (13, 12),
        (2, 2, 2, 2),
    ),
    "same-even-kernel": (
        dict(in_channels=2, out_channels=3, kernel_size=4, padding="same"),
        (7, 6),
        (1, 2, 1, 2),
    ),
    "groups2-circular-tuple": (
        dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2),
             groups=2, padding_mode="circular"),
        (9, 8),
        (1, 1, 2, 2),
    ),
    "depthwise-replicate-nobias": (
        dict(in_channels=3, out_channels=3, kernel_size=3, padding=1, groups=3, bias=False,
             padding_mode="replicate"),
        (6, 7),
        (1, 1, 1, 1),
    ),
    "valid-dilation-1x3": (
        dict(in_channels=2, out_channels=2, kernel_size=3, padding="valid", dilation=(1, 3)),
        (8, 10),
        (0, 0, 0, 0),
    ),
    "same-reflect-dilated": (
        dict(in_channels=2, out_channels=2, kernel_size=(2, 3), padding="same", dilation=2,
             padding_mode="reflect"),
        (7, 9),
        (1, 1, 2, 2),
    ),
}  # fmt: skip


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", list(GENERATED))
def test_generated_conv_every_point(case: str) -> None:
    """Every point of the first and last channels: the patches equal torch's own padding
    and unfolding, the padding mask marks the cells outside the input, and the sum gives
    the value."""
    kwargs, (height, width), (top, bottom, left, right) = GENERATED[case]
    torch.manual_seed(5)
    conv = nn.Conv2d(**kwargs).eval()
    if conv.bias is not None:
        with torch.no_grad():
            conv.bias.normal_()  # biases of the size of the products, not near 0
    x = torch.randn(1, kwargs["in_channels"], height, width)
    with torch.no_grad():
        out = conv(x)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = F.pad(x, (left, right, top, bottom), mode=mode)
    inside = F.pad(torch.ones(1, 1, height, width), (left, right, top, bottom))
    unfold = dict(kernel_size=conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
    columns = F.unfold(padded, **unfold)  # 1 × (C·kh·kw) × L
    masks = F.unfold(inside, **unfold)[0]  # kh·kw × L
    per_group = conv.in_channels // conv.groups
    model = nn.Sequential(conv)
    _, channels, rows, cols = out.shape
    for channel in (0, channels - 1):  # the first group and the last
        group = channel // (channels // conv.groups)
        for row in range(rows):
            for col in range(cols):
                e = explain_value(model, "conv_1", x, channel, row, col)
                assert e.value == pytest.approx(float(out[0, channel, row, col]), rel=1e-6)
                assert_sums(e)
                column = columns[0, :, row * cols + col].reshape(conv.in_channels, -1)
                expected = column[group * per_group : (group + 1) * per_group]
                np.testing.assert_array_equal(e.patches.reshape(per_group, -1), expected.numpy())
                outside = (masks[:, row * cols + col] == 0).numpy()
                assert (e.padding.reshape(per_group, -1) == outside).all()
                assert e.top == row * conv.stride[0] - top
                assert e.left == col * conv.stride[1] - left


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", list(GENERATED))
def test_padded_input_is_the_channel_padded_as_the_layer_pads_it(case: str) -> None:
    """The animation's input: torch's own padding of one channel, the window of every
    point at its stride, holding that point's patch."""
    kwargs, (height, width), (top, bottom, left, right) = GENERATED[case]
    torch.manual_seed(5)
    conv = nn.Conv2d(**kwargs).eval()
    model = nn.Sequential(conv)
    x = torch.randn(1, kwargs["in_channels"], height, width)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    channel = kwargs["in_channels"] - 1
    found = padded_input(model, "conv_1", x, channel)
    expected = F.pad(x[:, channel : channel + 1], (left, right, top, bottom), mode=mode)[0, 0]
    np.testing.assert_array_equal(found.plane, expected.numpy())
    inside = F.pad(torch.ones(1, 1, height, width), (left, right, top, bottom))[0, 0]
    np.testing.assert_array_equal(found.padding, (inside == 0).numpy())
    e = explain_value(model, "conv_1", x, conv.out_channels - 1, 1, 1)
    (dy, dx), (sy, sx) = conv.dilation, conv.stride
    kh, kw = conv.kernel_size
    window = found.plane[sy : sy + dy * (kh - 1) + 1 : dy, sx : sx + dx * (kw - 1) + 1 : dx]
    np.testing.assert_array_equal(window, e.patches[list(e.input_channels).index(channel)])
    with pytest.raises(ValueError, match="out of range"):
        padded_input(model, "conv_1", x, kwargs["in_channels"])


def test_batchnorm_against_torch() -> None:
    model = seeded(lambda: models.resnet18(weights=None)).requires_grad_(False)
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.running_var.uniform_(0.5, 2)
        model.bn1.weight.normal_()
        model.bn1.bias.normal_()
    torch.manual_seed(6)
    x = torch.randn(1, 3, 32, 32)
    (inp, out) = reference(model, x, ["bn1"])["bn1"]
    bn = model.bn1
    expected = F.batch_norm(inp, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                            bn.eps)  # fmt: skip
    for channel, row, col in points(out.shape[1:]):
        e = explain_value(model, "bn1", x, channel, row, col)
        assert e.kind == "batchnorm"
        assert e.x == pytest.approx(float(inp[0, channel, row, col]), rel=1e-5, abs=1e-6)
        assert e.mean == float(bn.running_mean[channel])
        assert e.var == float(bn.running_var[channel])
        constants = (bn.eps, float(bn.weight[channel]), float(bn.bias[channel]))
        assert (e.eps, e.weight, e.bias) == constants
        assert not e.batch_statistics
        assert e.value == pytest.approx(float(expected[0, channel, row, col]), rel=1e-5, abs=1e-5)
        assert e.result == pytest.approx(e.value, rel=1e-5, abs=1e-5)


def test_batchnorm_without_running_statistics_uses_the_batch() -> None:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False)).eval()
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        out = model(x)
    e = explain_value(model, "bn_1", x, 1, 2, 3)
    assert e.batch_statistics
    assert e.result == pytest.approx(float(out[0, 1, 2, 3]), rel=1e-4, abs=1e-5)
    assert e.value == pytest.approx(float(out[0, 1, 2, 3]), rel=1e-6)


def test_inplace_relu_shows_its_input_before_the_write() -> None:
    """The demo's in-place ReLUs and ResNet's shared in-place ReLU: x is the real
    pre-activation value, also where it is negative and the ReLU wrote 0 over it."""
    loaded = open_model("demo")
    torch.manual_seed(8)
    x = torch.rand(1, 1, 28, 28)
    inp, out = reference(loaded.model, x, ["features.1"])["features.1"]
    negative = np.unravel_index(int(inp[0].argmin()), inp.shape[1:])
    positive = np.unravel_index(int(inp[0].argmax()), inp.shape[1:])
    for channel, row, col in [tuple(map(int, negative)), tuple(map(int, positive))]:
        e = explain_value(loaded, "relu_1", x, channel, row, col)
        assert e.kind == "relu" and e.function == "ReLU" and e.formula == "max(0, x)"
        assert e.x == pytest.approx(float(inp[0, channel, row, col]), rel=1e-5, abs=1e-6)
        assert e.value == float(out[0, channel, row, col]) == pytest.approx(max(0.0, e.x))
    assert explain_value(loaded, "relu_1", x, *map(int, negative)).x < 0
    with torch.inference_mode():  # a caller in inference mode: no version counters there
        inside = explain_value(loaded, "relu_1", x.clone(), *map(int, negative))
    assert inside.x == explain_value(loaded, "relu_1", x, *map(int, negative)).x < 0

    model = seeded(lambda: models.resnet18(weights=None))
    torch.manual_seed(9)
    x = torch.randn(1, 3, 32, 32)
    refs = reference(model, x, ["relu", "layer1.0.relu"])
    for path in ("relu", "layer1.0.relu"):  # the first call of the block's shared ReLU
        inp, out = refs[path]
        for channel, row, col in points(out.shape[1:]):
            e = explain_value(model, path, x, channel, row, col)
            assert e.kind == "relu"
            assert e.x == pytest.approx(float(inp[0, channel, row, col]), rel=1e-5, abs=1e-6)
            assert e.value == pytest.approx(max(0.0, e.x), rel=1e-6)


@pytest.mark.parametrize(
    ("activation", "function", "reference_fn"),
    [
        (nn.ReLU6(inplace=True), "ReLU6", F.relu6),
        (nn.LeakyReLU(0.2, inplace=True), "LeakyReLU", lambda t: F.leaky_relu(t, 0.2)),
        (nn.LeakyReLU(0.1), "LeakyReLU", lambda t: F.leaky_relu(t, 0.1)),
    ],
)
def test_relu6_and_leaky_relu(activation: nn.Module, function: str, reference_fn: Callable) -> None:
    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), activation).eval()
    x = torch.randn(1, 1, 6, 6) * 10
    with torch.no_grad():
        pre = model[0](x)
    for channel, row, col in points(pre.shape[1:]):
        e = explain_value(model, Layers(model).names[1], x, channel, row, col)
        assert e.kind == "relu" and e.function == function
        assert e.x == pytest.approx(float(pre[0, channel, row, col]), rel=1e-6)
        expected = float(reference_fn(pre)[0, channel, row, col])
        assert e.value == pytest.approx(expected, rel=1e-6)
    assert explain_value(model, Layers(model).names[1], x, 0, 0, 0).negative_slope == (
        getattr(activation, "negative_slope", 0.0)
    )


class _AddThenRelu(nn.Module):
    """An in-place ReLU whose input comes from an op outside any module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x) - 1.0)


def test_inplace_relu_after_a_plain_op_says_its_input_is_lost() -> None:
    torch.manual_seed(11)
    model = _AddThenRelu().eval()
    x = torch.randn(1, 1, 6, 6)
    e = explain_value(model, "relu", x, 1, 2, 2)
    assert e.kind == "other"
    assert "cannot be shown" in e.note
    with torch.no_grad():
        assert e.value == float(model(x)[0, 1, 2, 2])


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool2d(2),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.MaxPool2d((2, 3), stride=(1, 2), padding=(1, 1), dilation=(2, 1)),
    ],
)
def test_maxpool_window_and_winner_against_torch(pool: nn.MaxPool2d) -> None:
    torch.manual_seed(12)
    x = torch.randn(1, 2, 7, 9)
    model = nn.Sequential(pool)
    out, indices = F.max_pool2d(
        x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, True
    )
    width = x.shape[3]
    dilation = (pool.dilation, pool.dilation) if isinstance(pool.dilation, int) else pool.dilation
    _, channels, rows, cols = out.shape
    for channel in range(channels):
        for row in range(rows):
            for col in range(cols):
                e = explain_value(model, "pool_1", x, channel, row, col)
                assert e.kind == "maxpool"
                assert e.value == float(out[0, channel, row, col])
                assert e.window.max() == e.value
                assert (e.window[e.padding] == -math.inf).all()
                # The winner is the cell torch's own indices point at.
                r, c = e.winner
                flat = (e.top + r * dilation[0]) * width + (e.left + c * dilation[1])
                assert flat == int(indices[0, channel, row, col])


@pytest.mark.parametrize(
    "pool",
    [
        nn.AvgPool2d(2),
        nn.AvgPool2d(3, stride=2, padding=1),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        nn.AvgPool2d(2, divisor_override=3),
        nn.AdaptiveAvgPool2d((3, 4)),
        nn.AdaptiveAvgPool2d((None, 2)),
        nn.AdaptiveAvgPool2d(1),
    ],
)
def test_avgpool_mean_against_torch(pool: nn.Module) -> None:
    torch.manual_seed(13)
    x = torch.randn(1, 2, 7, 9)
    model = nn.Sequential(pool)
    with torch.no_grad():
        out = pool(x)
    name = Layers(model).names[0]
    _, channels, rows, cols = out.shape
    for channel in range(channels):
        for row in range(rows):
            for col in range(cols):
                e = explain_value(model, name, x, channel, row, col)
                assert e.kind == "avgpool"
                assert e.value == float(out[0, channel, row, col])
                assert e.mean == pytest.approx(e.value, rel=1e-5, abs=1e-6)
                assert e.total == pytest.approx(float(e.window.astype(np.float64).sum()))
                assert (e.window[e.padding] == 0).all()


def test_adaptive_windows_are_torchs() -> None:
    """7 rows into 3: windows rows 0-2, 2-4 and 4-6 (they overlap), as torch takes them."""
    x = torch.arange(63.0).reshape(1, 1, 7, 9)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(3))
    e = explain_value(model, "adaptiveavgpool2d_1", x, 0, 1, 2)
    np.testing.assert_array_equal(e.window, x[0, 0, 2:5, 6:9].numpy())
    assert (e.top, e.left, e.divisor) == (2, 6, 9.0)


def test_class_scores_softmax_against_torch() -> None:
    loaded = open_model("demo")
    torch.manual_seed(14)
    x = torch.rand(1, 1, 28, 28)
    expected = loaded.probabilities(x)[0]
    with torch.no_grad():
        logits = loaded.model(x)[0]
    for k in range(10):
        e = explain_value(loaded, CLASS_SCORES, x, k)
        assert e.kind == "scores"
        np.testing.assert_allclose(e.logits, logits.numpy(), rtol=1e-5, atol=1e-5)
        assert e.value == pytest.approx(float(logits[k]), rel=1e-5, abs=1e-5)
        assert e.probability == pytest.approx(float(expected[k]), rel=1e-5, abs=1e-7)
        np.testing.assert_allclose(e.probabilities, expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(e.exponentials, np.exp(e.logits - e.logits.max()))
        assert e.shift == e.logits.max() and e.total == pytest.approx(e.exponentials.sum())

    # ResNet's last layer, fc, is the class scores too.
    model = seeded(lambda: models.resnet18(weights=None, num_classes=7))
    xr = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        probabilities = torch.softmax(model(xr), dim=1)[0]
    e = explain_value(model, "fc", xr, 6, 0, 0)
    assert e.kind == "scores" and e.layer == "fc"
    assert e.probability == pytest.approx(float(probabilities[6]), rel=1e-5)


def test_softmax_is_stable_for_large_logits() -> None:
    """Logits near 1000 overflow a plain exp; shifted by the largest they do not."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1000.0, 999.0, 990.0]))
    x = torch.zeros(1, 1, 2, 2)
    e = explain_value(model, CLASS_SCORES, x, 1)
    assert np.isfinite(e.exponentials).all() and e.exponentials[0] == 1.0
    expected = torch.softmax(torch.tensor([1000.0, 999.0, 990.0], dtype=torch.float64), 0)
    np.testing.assert_allclose(e.probabilities, expected.numpy(), rtol=1e-12)
    assert explain_value(model, "linear_1", x, 1).kind == "scores"


def test_a_linear_inside_the_network_is_not_the_class_scores() -> None:
    torch.manual_seed(15)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x = torch.randn(1, 1, 2, 2)
    e = explain_value(model, "linear_1", x, 4)
    assert e.kind == "other" and e.layer_type == "Linear"
    assert e.note.startswith("This step is a Linear layer, which is not explained here")
    with torch.no_grad():
        assert e.value == float(model[1](model[0](x))[0, 4])
    assert explain_value(model, "linear_1_2", x, 2).kind == "scores"
    # A ReLU on the hidden features (1×5, not maps) is explained too.
    relu = explain_value(model, "relu_1", x, 4)
    assert relu.kind == "relu" and relu.x == pytest.approx(e.value)


def test_other_layers_say_so() -> None:
    model = seeded(lambda: models.resnet18(weights=None))
    x = torch.randn(1, 3, 32, 32)
    e = explain_value(model, "layer1.0", x, 3, 1, 2)
    assert e.kind == "other" and e.layer_type == "BasicBlock"
    assert "BasicBlock" in e.note
    (_, out) = reference(model, x, ["layer1.0"])["layer1.0"]
    assert e.value == pytest.approx(float(out[0, 3, 1, 2]), rel=1e-5, abs=1e-6)
    assert isinstance(e, ValueExplanation)


def test_out_of_range_and_wrong_inputs_raise() -> None:
    loaded = open_model("demo")
    x = torch.rand(1, 1, 28, 28)
    with pytest.raises(
        ValueError, match=r"Channel 32 is out of range: conv_1 has 32 channels \(0 to 31\)"
    ):
        explain_value(loaded, "conv_1", x, 32, 0, 0)
    with pytest.raises(ValueError, match=r"Channel -1 is out of range"):
        explain_value(loaded, "conv_1", x, -1, 0, 0)
    with pytest.raises(ValueError, match=r"outside the 14×14 maps of pool_2: rows go from 0 to 13"):
        explain_value(loaded, "pool_2", x, 0, 14, 0)
    with pytest.raises(ValueError, match=r"columns from 0 to 27"):
        explain_value(loaded, "conv_1", x, 0, 0, 28)
    with pytest.raises(ValueError, match=r"Unknown layer 'conv_9'. Valid layers: conv_1"):
        explain_value(loaded, "conv_9", x, 0, 0, 0)
    with pytest.raises(ValueError, match=r"has 10 outputs \(0 to 9\)"):
        explain_value(loaded, CLASS_SCORES, x, 10)
    with pytest.raises(ValueError, match=r"row and col must be 0"):
        explain_value(loaded, CLASS_SCORES, x, 1, 0, 1)
    with pytest.raises(ValueError, match=r"one image at a time: pass a 1×C×H×W batch"):
        explain_value(loaded, "conv_1", torch.rand(2, 1, 28, 28), 0, 0, 0)
    with pytest.raises(ValueError, match=r"does not fit this network"):
        explain_value(loaded, "conv_1", torch.rand(1, 3, 28, 28), 0, 0, 0)
    with pytest.raises(TypeError, match=r"channel must be an int"):
        explain_value(loaded, "conv_1", x, 1.0, 0, 0)
    with pytest.raises(TypeError, match=r"nn.Module"):
        explain_value("demo", "conv_1", x, 0, 0, 0)
    model = seeded(lambda: models.resnet18(weights=None))
    with pytest.raises(ValueError, match=r"Unknown module 'layer1.0.conv3'. Close matches"):
        explain_value(model, "layer1.0.conv3", torch.rand(1, 3, 32, 32), 0, 0, 0)


def test_threads_share_the_loaded_models_copy() -> None:
    """Many threads explaining different layers at once on one shared copy get what one
    thread alone gets."""
    loaded = open_model("demo")
    torch.manual_seed(17)
    x = torch.rand(1, 1, 28, 28)
    layers = ["conv_2", "relu_2", "pool_2", "conv_4", "relu_3", "conv_1"] * 4
    asks = [(layer, i % 7, (3 * i) % 14, (5 * i) % 14) for i, layer in enumerate(layers)]
    alone = [explain_value(loaded, ask[0], x, *ask[1:]).value for ask in asks]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda ask: explain_value(loaded, ask[0], x, *ask[1:]), asks))
    assert [e.value for e in together] == alone


def test_no_hooks_remain_and_the_callers_model_is_untouched() -> None:
    torch.manual_seed(16)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(inplace=True), nn.MaxPool2d(2)
    )
    model.train()  # the caller's mode: the explanation runs a copy in eval mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pointers = {k: v.data_ptr() for k, v in model.state_dict().items()}
    x = torch.rand(1, 1, 8, 8)
    x_before = x.clone()
    for name in ("conv_1", "bn_1", "relu_1", "pool_1"):
        explain_value(model, name, x, 1, 2, 3)
    with pytest.raises(ValueError, match="out of range"):
        explain_value(model, "bn_1", x, 3, 0, 0)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert module.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) and value.data_ptr() == pointers[key], key
    assert torch.equal(x, x_before)
    # Batch norm used its running statistics (eval), not the training batch's.
    e = explain_value(model, "bn_1", x, 1, 2, 3)
    assert not e.batch_statistics and e.mean == 0.0 and e.var == 1.0

    loaded = open_model("demo")
    hooks = sum(len(m._forward_hooks) for m in loaded.private_copy.model.modules())
    with pytest.raises(ValueError):
        explain_value(loaded, "conv_2", torch.rand(1, 1, 28, 28), 99, 0, 0)
    explain_value(loaded, "relu_2", torch.rand(1, 1, 28, 28), 1, 0, 0)
    assert not loaded.private_copy.closed
    assert hooks == sum(len(m._forward_hooks) for m in loaded.private_copy.model.modules())
    assert not any(m._forward_hooks for m in loaded.model.modules())
