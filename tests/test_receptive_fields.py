"""Receptive fields on the executed graph, checked against the gradient method.

The reference: the field of one output value is the set of input pixels whose
gradient of that value is non-zero, on a float64 copy of the model whose weights
are positive (nothing cancels), batch norm an identity, and max pooling an average
over the same windows (a max sends its gradient to one cell only). One forward of a
batch gives many references at once: batch item ``b`` is read at one value only.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from cnnlens import Layers, demo_model
from cnnlens.layers import meta_copy
from cnnlens.receptive_fields import ReceptiveField, trace_fields

Query = tuple[str, int, int, int]  # module path, channel, row, column


def positive_twin(model: nn.Module) -> nn.Module:
    """A float64 copy where every value is a sum of positive terms of its field."""
    torch.manual_seed(0)
    twin = copy.deepcopy(model).double().eval()
    for name, module in list(twin.named_modules()):
        if isinstance(module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
            if isinstance(module, nn.MaxPool2d):
                assert module.dilation in (1, (1, 1))
                same = nn.AvgPool2d(module.kernel_size, module.stride, module.padding,
                                    module.ceil_mode)  # fmt: skip
            else:
                same = nn.AdaptiveAvgPool2d(module.output_size)
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, child, same)
        if hasattr(module, "inplace"):
            module.inplace = False
    with torch.no_grad():
        for name, tensor in [*twin.named_parameters(), *twin.named_buffers()]:
            if name.endswith("running_mean") or (name.endswith("bias") and tensor.dim() == 1):
                tensor.zero_()
            elif name.endswith("running_var") or tensor.dim() <= 1:
                tensor.fill_(1.0)
            elif tensor.is_floating_point():  # a weight: about half its input's mean
                tensor.copy_((torch.rand_like(tensor) + 0.5) * 0.5 / tensor[0].numel())
    return twin


def gradient_boxes(
    model: nn.Module, input_shape: tuple[int, int, int], queries: list[Query]
) -> list[tuple[int, int, int, int] | None]:
    """The box (left, top, right, bottom) of the pixels each queried value depends on."""
    twin = positive_twin(model)
    paths = {path for path, *_ in queries}
    outputs: dict[str, torch.Tensor] = {}

    def keep(path: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            outputs.setdefault(path, output.clone())  # before any in-place op writes into it

        return hook

    for path, module in twin.named_modules():
        if path in paths:
            module.register_forward_hook(keep(path))
    torch.manual_seed(1)
    x = (torch.rand((len(queries), *input_shape), dtype=torch.float64) + 0.5).requires_grad_()
    twin(x)
    picked = []
    for b, (path, channel, row, col) in enumerate(queries):
        out = outputs[path]
        picked.append(out[b, channel, row, col] if out.dim() == 4 else out[b, channel])
    (grad,) = torch.autograd.grad(torch.stack(picked).sum(), x)
    boxes = []
    for b in range(len(queries)):
        seen = grad[b].abs().sum(0) > 0
        rows, cols = seen.any(1).nonzero(), seen.any(0).nonzero()
        boxes.append(
            (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
            if seen.any()
            else None
        )
    return boxes


def cells_to_check(field: ReceptiveField, channels: tuple[int, ...] = (0,)) -> list:
    """Channel, row, column of two corners, the centre and a cell by the right edge."""
    height, width = field.rows.shape[1], field.cols.shape[1]
    cells = {(0, 0), (height - 1, width - 1), (height // 2, width // 2), (1 % height, width - 1)}
    return [(c, r, k) for c in channels for r, k in sorted(cells)]


def check_against_gradients(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    paths: list[str],
    channels: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, ReceptiveField]:
    """Every queried value's box equals the gradient method's; returns the fields."""
    fields = trace_fields(meta_copy(model).eval(), input_shape)
    queries = []
    for path in paths:
        assert fields[path] is not None, path
        cells = cells_to_check(fields[path], (channels or {}).get(path, (0,)))
        queries += [(path, *cell) for cell in cells]
    expected = gradient_boxes(model, input_shape, queries)
    for (path, channel, row, col), box in zip(queries, expected, strict=True):
        assert fields[path].box(row, col, channel) == box, (path, channel, row, col)
    return fields


def demo_stack_paths() -> list[str]:
    return [name for name, _ in demo_model().named_modules() if name.startswith("features.")]


def test_demo_cnn_fields_equal_the_gradient_method_and_the_classic_sizes():
    model = demo_model()
    fields = check_against_gradients(model, (1, 28, 28), demo_stack_paths())
    table = Layers(model).table((1, 28, 28))
    paths = [Layers(model).path(name) for name in table["layer"]]
    assert list(table["receptive field"]) == [fields[p].size for p in paths]
    assert list(table["receptive field"]) == [3, 3, 5, 5, 6, 10, 10, 14, 14, 16]


def vgg_like() -> nn.Sequential:
    """VGG's pattern (3×3 convs, 2×2 pools) with a dilated conv and a ceil-mode pool."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=2, dilation=2), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        nn.Conv2d(6, 6, 5, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.AvgPool2d(2, padding=1),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 5),
    ).eval()  # fmt: skip


def test_vgg_like_stack_fields_equal_the_gradient_method():
    model = vgg_like()
    paths = [str(i) for i in range(len(model) - 2)]
    fields = check_against_gradients(model, (3, 45, 45), paths)
    assert fields["13"].whole  # each output of the linear layer sees everything
    assert not fields["12"].whole and fields["12"].size == fields["11"].size  # flatten does not


def classic_sizes(stack: nn.Sequential, side: int) -> list[int]:
    """The textbook recurrence on a plain stack: r += (k - 1)·d·j, j ·= s; capped at the input."""
    sizes, field, jump = [], 1, 1
    for layer in stack:
        if hasattr(layer, "kernel_size"):
            kernel, stride = layer.kernel_size, layer.stride or layer.kernel_size
            dilation = getattr(layer, "dilation", 1)
            first = [v[0] if isinstance(v, tuple) else v for v in (kernel, stride, dilation)]
            field += (first[0] - 1) * first[2] * jump
            jump *= first[1]
        sizes.append(min(field, side))
    return sizes


@pytest.mark.parametrize("arch", ["alexnet", "vgg16", "vgg19_bn"])
def test_renamed_stacks_keep_the_classic_receptive_fields(arch):
    model = getattr(tvm, arch)()
    table = Layers(model).table((3, 224, 224))
    assert list(table["receptive field"]) == classic_sizes(model.features, 224)


def test_resnet18_blocks_and_inner_convs_equal_the_gradient_method():
    torch.manual_seed(0)
    model = tvm.resnet18().eval()
    paths = ["conv1", "maxpool", "layer1.0.conv1", "layer1", "layer2.0.conv1",
             "layer2.0.downsample.0", "layer2", "layer3.1.conv2", "layer3", "layer4"]  # fmt: skip
    fields = check_against_gradients(model, (3, 64, 64), paths)
    assert [fields[p].size for p in ("conv1", "maxpool", "layer1", "layer2")] == [7, 11, 43, 64]
    assert not fields["layer1"].whole and fields["layer4"].whole  # a 2×2 map at 64×64


def test_resnet18_layer4_sees_the_whole_image_at_224():
    torch.manual_seed(0)
    model = tvm.resnet18().eval()
    fields = trace_fields(meta_copy(model).eval(), (3, 224, 224))
    queries = [("layer4", 0, 0, 0), ("layer4", 5, 3, 3), ("layer3", 1, 13, 0)]
    expected = gradient_boxes(model, (3, 224, 224), queries)
    assert [fields[p].box(r, k, c) for p, c, r, k in queries] == expected
    assert expected[1] == (0, 0, 224, 224) and expected[0] != expected[1]
    assert fields["fc"].whole and not fields["layer4"].whole
    layers = Layers(model)
    assert layers.receptive_field("layer4", (3, 224, 224)).size == 224
    assert layers.receptive_field("layer3", (3, 224, 224)).size == 211  # 211 < 224: not capped
    assert layers.table((3, 224, 224)).set_index("layer").loc["avgpool", "receptive field"] == 224


def test_mobilenet_v3_small_blocks_equal_the_gradient_method():
    """Its blocks hold squeeze-and-excitation: a global pool whose weights scale the maps,
    so a block after one sees the whole image."""
    torch.manual_seed(0)
    model = tvm.mobilenet_v3_small().eval()
    paths = ["features.0", "features.1.block.0", "features.1", "features.2", "features.3",
             "features.4.block.0", "features.4"]  # fmt: skip
    fields = check_against_gradients(model, (3, 64, 64), paths)
    assert not fields["features.1.block.0"].whole and fields["features.1"].whole


def test_efficientnet_b0_blocks_equal_the_gradient_method():
    torch.manual_seed(0)
    model = tvm.efficientnet_b0().eval()
    paths = ["features.0", "features.1.0.block.0", "features.1.0.block.1.avgpool",
             "features.1", "features.2.0.block.1", "features.3"]  # fmt: skip
    check_against_gradients(model, (3, 48, 48), paths)


def test_concatenated_channels_keep_each_their_own_field():
    """googlenet's Inception blocks concatenate a 1×1 branch and a 5×5 one (torchvision's
    "5×5" branch is a 3×3 conv): channel by channel, the fields differ."""
    torch.manual_seed(0)
    model = tvm.googlenet(init_weights=False, aux_logits=False).eval()
    channels = {"inception3a": (0, 100, 220)}  # the 1×1, 3×3 and "5×5" branches
    fields = check_against_gradients(model, (3, 64, 64), ["inception3a"], channels)
    first, last = (fields["inception3a"].box(4, 4, c) for c in (0, 220))
    assert last[2] - last[0] > first[2] - first[0]


class EdgeOps(nn.Module):
    """Operations past plain stacks: reflect padding, transposed conv, nearest upsampling,
    concatenation along the width, a channels-last layer norm and linear (ConvNeXt)."""

    def __init__(self) -> None:
        super().__init__()
        self.reflect = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect")
        self.down = nn.Conv2d(3, 3, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(3, 3, 3, stride=2, padding=1, output_padding=1)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.norm = nn.LayerNorm(3)
        self.linear = nn.Linear(3, 3)
        self.mixed = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reflect(x)
        y = self.up(self.down(x))
        z = self.upsample(torch.nn.functional.avg_pool2d(x, 2))
        both = torch.cat([y[..., :8], z[..., 8:]], dim=3) + torch.flip(x, dims=(2,))
        lined = self.linear(self.norm(both.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self.mixed(lined + torch.roll(both, 3, dims=3))


def test_edge_operations_equal_the_gradient_method():
    paths = ["reflect", "down", "up", "upsample", "mixed"]
    check_against_gradients(EdgeOps().eval(), (2, 16, 16), paths)


class Sorted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.after = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.after(x.sort(dim=3).values)  # sorting has no rule: what it sees is unknown


def test_an_operation_without_a_rule_leaves_the_fields_after_it_unknown():
    layers = Layers(Sorted())
    assert layers.receptive_field("conv", (1, 12, 12)).size == 3
    assert layers.receptive_field("after", (1, 12, 12)) is None
    assert list(layers.table((1, 12, 12))["receptive field"]) == [3, None]


def test_a_field_refuses_a_point_outside_its_map_and_a_classifier_too_small_stops_the_trace():
    layers = Layers(demo_model())
    field = layers.receptive_field("conv_2", (1, 28, 28))
    with pytest.raises(ValueError, match="Map row 28 is outside this layer's 28 rows"):
        field.box(28, 0)
    with pytest.raises(ValueError, match="Channel -1 is outside"):
        field.box(0, 0, -1)
    # At 20×20 the classifier no longer fits: the stack's fields stay, the rest is unknown.
    small = Layers(demo_model())
    assert small.receptive_field("conv_4", (1, 20, 20)).size == 14
    assert small.receptive_field("classifier", (1, 20, 20)) is None


def test_tracing_leaves_the_model_alone_and_is_quick():
    model = tvm.resnet50()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start = time.perf_counter()
    Layers(model).receptive_field("layer4", (3, 224, 224))
    assert time.perf_counter() - start < 5
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
