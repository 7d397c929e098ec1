"""The extractor for any nn.Module: values per architecture, in-place ops, hooks, threads."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torchvision import models
from torchvision.models.vision_transformer import VisionTransformer

from cnnlens.extractor import FeatureExtractor, build_extractor
from cnnlens.layers import TABLE_COLUMNS, Layers, module_names
from cnnlens.lens import Lens, build_lens

Reference = Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]


def seeded(arch: str, **kwargs: object) -> nn.Module:
    """A torchvision model with seeded random weights, in eval mode."""
    torch.manual_seed(0)
    return getattr(models, arch)(weights=None, **kwargs).eval()


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    ).eval()


def assert_matches(model: nn.Module, x: torch.Tensor, expected: dict[str, torch.Tensor]) -> None:
    """Exact values in the model's own memory format, close ones in channels-last."""
    exact = build_extractor(model, list(expected), channels_last=False)(x)
    assert list(exact) == [name for name in module_names(model) if name in expected]
    for name, value in expected.items():
        assert torch.equal(exact[name], value), name
    fast = build_extractor(model, list(expected))(x)
    for name, value in expected.items():
        torch.testing.assert_close(fast[name], value, atol=1e-4, rtol=1e-4, msg=name)


def resnet_stem(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.maxpool(m.relu(m.bn1(m.conv1(x))))


def resnet18_refs(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    stem = resnet_stem(m, x)
    block = m.layer1[0]
    bn1 = block.bn1(block.conv1(stem))
    pre_relu = bn1.clone()
    bn2 = block.bn2(block.conv2(block.relu(bn1)))
    pre_add = bn2.clone()
    layer1 = m.layer1(stem)
    return {
        "layer1": layer1,
        "layer1.0.bn1": pre_relu,
        "layer1.0.bn2": pre_add,
        "layer2": m.layer2(layer1),
    }


def resnet50_refs(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    stem = resnet_stem(m, x)
    block = m.layer1[0]
    bn1 = block.bn1(block.conv1(stem))
    pre_relu = bn1.clone()
    relu = block.relu(bn1)  # the first of the three calls of the block's one ReLU
    bn3 = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(relu)))))
    return {
        "layer1.0.bn1": pre_relu,
        "layer1.0.relu": relu,
        "layer1.0.bn3": bn3.clone(),
        "layer1.0.downsample": block.downsample(stem),
        "layer2": m.layer2(m.layer1(stem)),
    }


def features_refs(indices: list[int], attr: str = "features") -> Reference:
    def refs(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        layers = getattr(m, attr)
        return {f"{attr}.{i}": layers[: i + 1](x) for i in indices}

    return refs


def densenet_refs(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    # norm0 is followed by an in-place ReLU module, features by an in-place F.relu.
    return {
        "features.norm0": m.features[:2](x),
        "features.denseblock1": m.features[:5](x),
        "features": m.features(x),
        "classifier": m(x),
    }


def regnet_refs(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    stem = m.stem(x)
    return {
        "stem": stem,
        "trunk_output.block1": m.trunk_output[:1](stem),
        "trunk_output.block2": m.trunk_output[:2](stem),
    }


def googlenet_refs(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    # BasicConv2d ends in F.relu(x, inplace=True): conv1.bn is overwritten after capture.
    conv2 = m.conv2(m.maxpool1(m.conv1(x)))
    return {
        "conv1.bn": m.conv1.bn(m.conv1.conv(x)),
        "conv2": conv2,
        "inception3a": m.inception3a(m.maxpool2(m.conv3(conv2))),
    }


def inception_refs(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    h = m.Conv2d_2b_3x3(m.Conv2d_2a_3x3(m.Conv2d_1a_3x3(x)))
    h = m.maxpool2(m.Conv2d_4a_3x3(m.Conv2d_3b_1x1(m.maxpool1(h))))
    return {
        "Conv2d_1a_3x3.bn": m.Conv2d_1a_3x3.bn(m.Conv2d_1a_3x3.conv(x)),
        "Mixed_5b": m.Mixed_5b(h),
    }


def shufflenet_refs(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    conv1 = m.conv1(x)
    pooled = m.maxpool(conv1)
    return {
        "conv1": conv1,
        "stage2.0.branch2.1": m.stage2[0].branch2[:2](pooled),  # before an in-place ReLU
        "stage2": m.stage2(pooled),
    }


def vit_refs(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    tokens = m._process_input(x)
    tokens = torch.cat([m.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
    encoder = m.encoder
    return {
        "conv_proj": m.conv_proj(x),
        "encoder.layers.encoder_layer_0": encoder.layers[0](
            encoder.dropout(tokens + encoder.pos_embedding)
        ),
    }


FAMILIES: dict[str, tuple[Callable[[], nn.Module], int, Reference]] = {
    "resnet18": (lambda: seeded("resnet18"), 32, resnet18_refs),
    "resnet50": (lambda: seeded("resnet50"), 32, resnet50_refs),
    "mobilenet_v2": (lambda: seeded("mobilenet_v2"), 32, features_refs([1, 4])),
    "mobilenet_v3_small": (lambda: seeded("mobilenet_v3_small"), 32, features_refs([0, 3])),
    "efficientnet_b0": (lambda: seeded("efficientnet_b0"), 32, features_refs([1, 3])),
    "densenet121": (lambda: seeded("densenet121"), 32, densenet_refs),
    "convnext_tiny": (lambda: seeded("convnext_tiny"), 32, features_refs([1, 3])),
    "regnet_y_400mf": (lambda: seeded("regnet_y_400mf"), 32, regnet_refs),
    "googlenet": (lambda: seeded("googlenet", init_weights=False), 32, googlenet_refs),
    "inception_v3": (lambda: seeded("inception_v3", init_weights=False), 75, inception_refs),
    "shufflenet_v2_x0_5": (lambda: seeded("shufflenet_v2_x0_5"), 32, shufflenet_refs),
    "mnasnet0_5": (lambda: seeded("mnasnet0_5"), 32, features_refs([2, 8], attr="layers")),
    "squeezenet1_1": (lambda: seeded("squeezenet1_1"), 32, features_refs([2, 5])),
    "vit": (tiny_vit, 32, vit_refs),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_values_equal_an_independent_forward(family):
    build, size, refs = FAMILIES[family]
    model = build()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = refs(model, x.clone())
    assert_matches(model, x, expected)


def cloned_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every submodule's first tensor output, copied the moment it is made."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str, output: object) -> None:
        if name not in outputs and isinstance(output, torch.Tensor):
            outputs[name] = output.clone()

    handles = [
        module.register_forward_hook(lambda _m, _a, out, name=name: keep(name, out))
        for name, module in model.named_modules()
        if name
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return outputs


@pytest.mark.parametrize("family", ["resnet50", "googlenet", "mobilenet_v3_small"])
def test_every_module_at_once_equals_its_output_copied_when_made(family):
    """Residual adds, in-place ReLU modules and F.relu(inplace=True), shared ReLUs: all exact."""
    build, size, _ = FAMILIES[family]
    model = build()
    x = torch.randn(1, 3, size, size)
    expected = cloned_outputs(model, x)
    assert len(expected) > 100
    out = build_extractor(model, list(expected), channels_last=False)(x)
    assert list(out) == [name for name in module_names(model) if name in expected]
    for name, value in expected.items():
        assert torch.equal(out[name], value), name


def test_resnet_targets_before_in_place_ops_keep_their_values():
    """The hazard is real: what follows these targets overwrites their output tensors."""
    model = seeded("resnet18")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        refs = resnet18_refs(model, x)
        block = model.layer1[0]
        after = block(resnet_stem(model, x))
    assert (refs["layer1.0.bn1"] < 0).any(), "a ReLU follows: negatives before it"
    assert not torch.allclose(refs["layer1.0.bn2"], after), "out += identity follows"
    bottleneck = seeded("resnet50")
    with torch.no_grad():
        assert (resnet50_refs(bottleneck, x)["layer1.0.bn3"] < 0).any()


def test_an_overwritten_target_is_copied_from_then_on():
    """A block's ``out += identity`` writes into bn2's output; no module does it, so only
    the version counter sees it. bn1's in-place ReLU runs out of place instead."""
    model = seeded("resnet18")
    targets = ["layer1.0.bn1", "layer1.0.bn2", "layer2"]
    extractor = build_extractor(model, targets, channels_last=False)
    runs: list[int] = []
    extractor.model.conv1.register_forward_pre_hook(lambda *_: runs.append(1))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = resnet18_refs(model, x)
    first = extractor(x)
    assert len(runs) == 2, "the first call notices the overwrite and runs again"
    second = extractor(x)
    assert len(runs) == 3, "later calls copy the target directly"
    assert extractor._source._copied == {"layer1.0.bn2"}
    for name in targets:
        assert torch.equal(first[name], expected[name]), name
        assert torch.equal(second[name], expected[name]), name


def test_exact_inside_the_callers_inference_mode_and_for_inference_inputs():
    """Inference tensors have no version counter; the extractor must not depend on one."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Identity(), nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Conv2d(2, 2, 1)
    )
    x = torch.randn(1, 1, 6, 6)
    with torch.no_grad():
        expected = {"0": x.clone(), "1": model[:2](x), "3": model(x)}
    assert (expected["1"] < 0).any()
    extractor = build_extractor(model, ["0", "1", "3"], channels_last=False)
    with torch.inference_mode():
        inside = extractor(x)
        frozen = x.clone()
    for out in (inside, extractor(frozen)):
        for name, value in expected.items():
            assert torch.equal(out[name], value), name


def test_a_model_that_writes_into_its_input_cannot_be_recomputed():
    class WritesInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)
            self.head = nn.Conv2d(2, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.conv(x)
            x.mul_(2)
            return self.head(out.add_(1))

    extractor = build_extractor(WritesInput(), ["conv", "head"], channels_last=False)
    with pytest.raises(ValueError, match=r"writes into its input.*'conv'"):
        extractor(torch.randn(1, 1, 4, 4))


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("ran past the deepest target")


class Branchy(nn.Module):
    """A non-sequential forward with a module that must never run after the targets."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3)
        self.block = nn.Sequential(nn.Conv2d(2, 2, 3), nn.ReLU())
        self.boom = Boom()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.boom(self.block(self.stem(x)) + 1)


def test_forward_stops_after_the_last_target():
    model = Branchy()
    x = torch.randn(1, 1, 8, 8)
    out = build_extractor(model, ["block", "stem", "block.0"], channels_last=False)(x)
    assert list(out) == ["stem", "block", "block.0"]
    with torch.no_grad():
        assert torch.equal(out["block"], model.block(model.stem(x)))
    with pytest.raises(ValueError, match="own code failed.*AssertionError: ran past"):
        build_extractor(model, "boom")(x)


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_live_on_the_copy_and_close_removes_them():
    model = seeded("resnet18")
    x = torch.randn(1, 3, 32, 32)
    every = len(module_names(model))  # one hook per submodule of the copy
    with build_extractor(model, ["layer1", "layer2.0.bn1"]) as extractor:
        assert hook_count(extractor.model) == every
        extractor(x)
        assert hook_count(model) == 0
    assert hook_count(extractor.model) == 0
    extractor.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        extractor(x)
    with pytest.raises(KeyError), build_extractor(model, "layer1") as failing:
        assert hook_count(failing.model) == every
        raise KeyError("inside the block")
    assert hook_count(failing.model) == 0
    assert hook_count(model) == 0


def test_callers_model_is_left_as_it_was():
    model = seeded("resnet18").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strides = {k: v.stride() for k, v in model.state_dict().items()}
    extractor = build_extractor(model, ["layer1.0.bn1", "layer2"])
    extractor(torch.randn(2, 3, 32, 32))
    assert all(m.training for m in model.modules())
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    assert all(p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
        assert value.stride() == strides[key], key
    assert not any(p is q for p in extractor.model.parameters() for q in model.parameters())
    assert not extractor.model.training


def test_threads_sharing_one_extractor_each_get_their_own_values():
    model = seeded("resnet18")
    # layer1.0.bn1 is overwritten after capture: threads also race to learn that.
    extractor = build_extractor(model, ["layer1.0.bn1", "layer2"])
    images = [torch.full((1, 3, 32, 32), float(i)) + torch.randn(1, 3, 32, 32) for i in range(8)]
    with torch.no_grad():
        expected = [resnet18_refs(model, image) for image in images]
    barrier = threading.Barrier(len(images))
    results: dict[int, list[dict[str, torch.Tensor]]] = {}

    def work(i: int) -> None:
        barrier.wait()
        results[i] = [extractor(images[i]) for _ in range(10)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(len(images)))
    for i, outs in results.items():
        for out in outs:
            for name in ("layer1.0.bn1", "layer2"):
                torch.testing.assert_close(out[name], expected[i][name], atol=1e-4, rtol=1e-4)


def test_outputs_are_detached_and_in_the_models_dtype():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(inplace=True), nn.Conv2d(3, 2, 1))
    half = model.to(torch.bfloat16)
    extractor = build_extractor(half, ["0", "2"], channels_last=False)
    assert extractor.dtype == torch.bfloat16 and extractor.device == torch.device("cpu")
    x = torch.randn(2, 2, 6, 6, requires_grad=True)
    out = extractor(x)
    with torch.no_grad():
        expected = half[0](x.to(torch.bfloat16))
        assert torch.equal(out["0"], expected)
        assert torch.equal(out["2"], half(x.to(torch.bfloat16)))
    assert all(v.dtype == torch.bfloat16 and not v.requires_grad for v in out.values())


def test_unknown_names_suggest_close_matches():
    model = seeded("resnet18")
    with pytest.raises(
        ValueError,
        match=r"Unknown module 'layer1\.0\.bn'\. Close matches: .*"
        r"'layer1\.0\.bn1'.*module_names",
    ):
        build_extractor(model, ["layer1", "layer1.0.bn"])
    with pytest.raises(ValueError, match=r"Unknown module 'zzz'\. cnnlens\.module_names"):
        build_extractor(model, "zzz")
    with pytest.raises(ValueError, match="at least one target"):
        build_extractor(model, [])


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="nn.Module, got dict"):
        build_extractor({"conv": 1}, "conv")
    with pytest.raises(TypeError, match="nn.Module, got str"):
        module_names("resnet18")
    model = Branchy()
    with pytest.raises(TypeError, match="Layer names are strings, got 3"):
        build_extractor(model, ["stem", 3])
    with pytest.raises(TypeError, match="torch.Tensor"):
        build_extractor(model, "stem")([[0.0]])


def test_input_that_does_not_fit_gives_a_clear_error():
    with pytest.raises(ValueError, match=r"input of shape \(1, 1, 32, 32\) does not fit"):
        build_extractor(seeded("resnet18"), "layer1")(torch.randn(1, 1, 32, 32))


def test_a_module_without_a_tensor_output_is_named():
    extractor = build_extractor(tiny_vit(), "encoder.layers.encoder_layer_0.self_attention")
    with pytest.raises(
        ValueError, match=r"'encoder\.layers\.encoder_layer_0\.self_attention' returns a tuple"
    ):
        extractor(torch.randn(1, 3, 32, 32))


def test_a_module_the_eval_forward_skips_is_named():
    extractor = build_extractor(seeded("googlenet", init_weights=False), ["conv1", "aux1"])
    with pytest.raises(ValueError, match=r"'aux1' did not run"):
        extractor(torch.randn(1, 3, 64, 64))


def test_module_names_are_the_qualified_submodule_names():
    model = seeded("resnet18")
    names = module_names(model)
    assert names == [name for name, _ in model.named_modules()][1:]
    assert names[:6] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer1.0"]


@pytest.mark.parametrize("family", ["resnet18", "googlenet", "vit"])
def test_module_table_matches_a_real_forward(family):
    """googlenet's aux heads never run in eval mode; a ViT's attention returns a tuple."""
    build, size, _ = FAMILIES[family]
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = Layers(model).table((3, size, size))
    shapes = {
        name: out.shape[1:]
        for name, out in cloned_outputs(model, torch.zeros(1, 3, size, size)).items()
    }

    assert list(table.columns) == TABLE_COLUMNS
    assert table["layer"].tolist() == module_names(model)
    modules = dict(model.named_modules())
    for row in table.to_dict("records"):
        module = modules[row["layer"]]
        shape = shapes.get(row["layer"])
        assert row["depth"] == row["layer"].count(".")
        field = Layers(model).receptive_field(row["layer"], (3, size, size))
        assert row["receptive field"] == (None if field is None else field.size), row["layer"]
        assert row["type"] == type(module).__name__
        assert row["children"] == (len(list(module.children())) > 0)
        assert row["parameters"] == sum(p.numel() for p in module.parameters())
        assert row["output shape"] == ("×".join(map(str, shape)) if shape else ""), row["layer"]
        assert row["map bytes"] == (shape.numel() * 4 if shape else 0), row["layer"]
    for key, value in model.state_dict().items():
        assert value.device.type == "cpu" and torch.equal(value, before[key]), key
    assert (table["output shape"] == "").any() == (family != "resnet18")


def test_module_table_of_resnet18_in_numbers():
    table = Layers(seeded("resnet18")).table((3, 32, 32)).set_index("layer")
    assert table.loc["conv1", "output shape"] == "64×16×16"
    assert table.loc["conv1", "map bytes"] == 64 * 16 * 16 * 4
    assert table.loc["conv1", "parameters"] == 64 * 3 * 7 * 7
    assert table.loc["layer2.0.downsample.0", "depth"] == 3
    assert table.loc["layer2", "output shape"] == "128×4×4"
    assert bool(table.loc["layer2", "children"]) and not table.loc["fc", "children"]


def test_module_table_rejects_an_input_that_does_not_fit():
    with pytest.raises(ValueError, match=r"input of shape \(1, 64, 64\) does not fit"):
        Layers(seeded("resnet18")).table((1, 64, 64))


def test_renamed_layers_and_module_paths_both_work_in_build_extractor(tiny_cnn):
    x = torch.randn(2, 1, 8, 8)
    both = build_extractor(tiny_cnn, ["8", "conv_1", "relu_3", "0"], channels_last=False)
    assert both.targets == ("conv_1", "0", "relu_3", "8")  # network order, as given
    out = both(x)
    assert list(out) == ["conv_1", "0", "relu_3", "8"]
    with torch.no_grad():
        assert torch.equal(out["conv_1"], tiny_cnn.eval()[0](x))
    assert torch.equal(out["0"], out["conv_1"]) and torch.equal(out["8"], out["relu_3"])
    assert type(both) is FeatureExtractor and isinstance(build_lens(tiny_cnn, "0"), Lens)
    with pytest.raises(ValueError, match=r"Unknown layer 'conv_9'\. Valid layers: conv_1"):
        build_extractor(tiny_cnn, ["conv_1", "conv_9"])
    with pytest.raises(ValueError, match=r"Unknown module 'conv_9'\. Close matches: 'conv1'"):
        build_extractor(seeded("resnet18"), ["conv_9"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bfloat16_model_on_cuda_takes_float_input():
    model = seeded("resnet18").cuda().to(torch.bfloat16)
    x = torch.randn(2, 3, 64, 64)
    out = build_extractor(model, ["layer1.0.bn1", "layer2"])(x)
    with torch.no_grad():
        expected = resnet18_refs(model, x.cuda().to(torch.bfloat16))
    for name in out:
        assert out[name].dtype == torch.bfloat16 and out[name].device.type == "cuda"
        error = (out[name].float() - expected[name].float()).norm() / expected[name].float().norm()
        assert error < 2e-2, name  # bf16 keeps 8 bits of mantissa; kernels differ by format
