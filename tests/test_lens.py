"""The lens: renamed layers, values equal to the original model, threads, errors."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from torchvision.models import vgg16
from torchvision.models.feature_extraction import create_feature_extractor

from cnnlens import Extractor, build_lens, layer_names

TINY_NAMES = [
    "conv_1",
    "bn_1",
    "relu_1",
    "pool_1",
    "conv_2",
    "relu_2",
    "dropout_2",
    "conv_3",
    "relu_3",
    "adaptiveavgpool2d_3",
]


def reference(model: nn.Sequential, index: int, x: torch.Tensor) -> torch.Tensor:
    """The original model run up to layer ``index``, in eval mode, on a copy of x."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model[: index + 1](x.clone())
    model.train(was_training)
    return out


def test_every_layer_is_kept_and_named_by_its_block(tiny_cnn):
    assert layer_names(tiny_cnn) == TINY_NAMES
    lens = build_lens(tiny_cnn, ["conv_2"])
    assert lens.layer_names == TINY_NAMES
    # Every layer in order, the extractor right after its target, as in the original recipe.
    assert [name for name, _ in lens.net.named_children()] == [
        *TINY_NAMES[:5],
        "extractor_conv_2",
        *TINY_NAMES[5:],
    ]
    assert isinstance(lens.net.extractor_conv_2, Extractor)
    assert [type(m) for m in lens.net if not isinstance(m, Extractor)] == [
        type(m) for m in tiny_cnn
    ]


def test_repeated_kinds_in_one_block_get_distinct_names():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout(), nn.Dropout(), nn.ReLU())
    assert layer_names(model) == ["conv_1", "dropout_1", "dropout_1_2", "relu_1"]


def test_layers_before_the_first_conv_belong_to_block_1():
    model = nn.Sequential(nn.Identity(), nn.Conv2d(1, 2, 3))
    assert layer_names(model) == ["identity_1", "conv_1"]


def test_model_with_sequential_features_is_accepted(tiny_cnn):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = tiny_cnn
            self.classifier = nn.Linear(32, 2)

    assert layer_names(Net()) == TINY_NAMES


@pytest.mark.parametrize("index", range(len(TINY_NAMES)))
def test_each_target_equals_the_original_model_up_to_that_layer(tiny_cnn, index):
    x = torch.randn(3, 1, 12, 12)
    expected = reference(tiny_cnn, index, x)
    exact = build_lens(tiny_cnn, TINY_NAMES[index], channels_last=False)(x)
    assert torch.equal(exact[TINY_NAMES[index]], expected)
    fast = build_lens(tiny_cnn, TINY_NAMES[index])(x)
    torch.testing.assert_close(fast[TINY_NAMES[index]], expected, atol=1e-5, rtol=1e-5)


def test_all_targets_at_once_equal_their_references(tiny_cnn):
    x = torch.randn(2, 1, 12, 12)
    features = build_lens(tiny_cnn, TINY_NAMES, channels_last=False)(x)
    assert list(features) == TINY_NAMES
    for i, name in enumerate(TINY_NAMES):
        assert torch.equal(features[name], reference(tiny_cnn, i, x)), name


def test_vgg16_conv_targets_keep_pre_relu_values():
    torch.manual_seed(0)
    features = vgg16().features.eval()
    x = torch.randn(2, 3, 64, 64)
    targets = {"conv_1": 0, "conv_5": 10, "conv_8": 17}
    lens = build_lens(features, list(targets))
    assert lens.layer_names[:5] == ["conv_1", "relu_1", "conv_2", "relu_2", "pool_2"]
    out = lens(x)
    for name, index in targets.items():
        expected = reference(features, index, x)
        assert (expected < 0).any(), "a conv output has negatives before its ReLU"
        torch.testing.assert_close(out[name], expected, atol=1e-5, rtol=1e-4)
    exact = build_lens(features, list(targets), channels_last=False)(x)
    for name, index in targets.items():
        assert torch.equal(exact[name], reference(features, index, x))


def test_create_feature_extractor_is_wrong_where_the_lens_is_right():
    """The hazard the lens avoids: FX keeps a reference the in-place ReLU overwrites."""
    torch.manual_seed(0)
    features = vgg16().features[:5].eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        # A deeper target makes the in-place ReLU after conv_1 part of the traced graph.
        fx = create_feature_extractor(features, {"0": "conv_1", "2": "conv_2"})(x)["conv_1"]
    expected = reference(features, 0, x)
    assert not torch.equal(fx, expected)
    assert torch.equal(fx, expected.clamp(min=0))
    assert torch.equal(build_lens(features, "conv_1", channels_last=False)(x)["conv_1"], expected)


def test_forward_stops_after_the_deepest_target():
    class Boom(nn.ReLU):  # an activation, so the stack keeps its renamed layers
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("ran past the deepest target")

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), Boom())
    out = build_lens(model, ["conv_1", "relu_1"])(torch.randn(1, 1, 5, 5))
    assert list(out) == ["conv_1", "relu_1"]
    with pytest.raises(ValueError, match="own code failed.*AssertionError: ran past"):
        build_lens(model, "boom_1")(torch.randn(1, 1, 5, 5))


def test_targets_come_back_in_network_order(tiny_cnn):
    out = build_lens(tiny_cnn, ["conv_3", "conv_1", "conv_1"])(torch.randn(1, 1, 8, 8))
    assert list(out) == ["conv_1", "conv_3"]


def test_threads_sharing_one_lens_each_get_their_own_features(tiny_cnn):
    lens = build_lens(tiny_cnn, ["conv_1", "relu_3"])
    images = [torch.full((1, 1, 16, 16), float(i)) + torch.randn(1, 1, 16, 16) for i in range(8)]
    expected = [reference(tiny_cnn, 8, image) for image in images]
    barrier = threading.Barrier(len(images))
    results: dict[int, list[torch.Tensor]] = {}

    def work(i: int) -> None:
        barrier.wait()
        results[i] = [lens(images[i])["relu_3"] for _ in range(20)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, outs in results.items():
        for out in outs:
            torch.testing.assert_close(out, expected[i], atol=1e-5, rtol=1e-5)
    assert not any(hasattr(m, "feature") for m in lens.net.modules())


def test_callers_model_is_left_as_it_was(tiny_cnn):
    tiny_cnn.train()
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    strides = {k: v.stride() for k, v in tiny_cnn.state_dict().items()}
    lens = build_lens(tiny_cnn, TINY_NAMES)
    lens(torch.randn(4, 1, 8, 8))
    assert tiny_cnn.training and all(m.training for m in tiny_cnn.modules())
    assert tiny_cnn[2].inplace and tiny_cnn[5].inplace
    assert all(p.requires_grad for p in tiny_cnn.parameters())
    for key, value in tiny_cnn.state_dict().items():
        assert torch.equal(value, before[key]), key
        assert value.stride() == strides[key], key
    assert not any(p is q for p in lens.net.parameters() for q in tiny_cnn.parameters())


def test_runs_in_eval_mode_without_a_graph_whatever_the_callers_mode(tiny_cnn):
    tiny_cnn.train()
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    lens = build_lens(tiny_cnn, ["conv_1", "dropout_2"], channels_last=False)
    expected = reference(tiny_cnn, 6, x.detach())  # eval: dropout is the identity
    with torch.inference_mode():
        inside = lens(x)
    for out in (lens(x), inside):
        assert not out["dropout_2"].requires_grad
        assert torch.equal(out["dropout_2"], expected)
        assert torch.equal(out["conv_1"], reference(tiny_cnn, 0, x.detach()))


def test_module_paths_of_the_stack_work_beside_renamed_layers(tiny_cnn):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = tiny_cnn
            self.classifier = nn.Linear(32, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(x).flatten(1))

    net = Net()
    x = torch.randn(2, 1, 8, 8)
    out = build_lens(net, ["features.4", "conv_1"], channels_last=False)(x)
    assert list(out) == ["conv_1", "features.4"]
    assert torch.equal(out["features.4"], reference(tiny_cnn, 4, x))
    assert torch.equal(build_lens(tiny_cnn, "4", channels_last=False)(x)["4"], out["features.4"])
    with pytest.raises(ValueError, match=r"'classifier' is not a layer of the renamed stack"):
        build_lens(net, ["conv_1", "classifier"])


def test_unknown_target_names_the_valid_layers(tiny_cnn):
    with pytest.raises(ValueError, match=r"Unknown layer 'conv_9'\. Valid layers: conv_1, bn_1"):
        build_lens(tiny_cnn, ["conv_1", "conv_9"])
    with pytest.raises(ValueError, match="at least one target"):
        build_lens(tiny_cnn, [])


def test_wrong_types_raise_type_error(tiny_cnn):
    with pytest.raises(TypeError, match=r"Conv2d has no renamed layers.*vgg16\(\)\.features"):
        build_lens(nn.Conv2d(1, 1, 3), "conv_1")
    with pytest.raises(TypeError, match=r"Sequential has no renamed layers"):
        build_lens(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Sequential(nn.ReLU())), "conv_1")
    with pytest.raises(TypeError, match="Layer names are strings"):
        build_lens(tiny_cnn, [1])
    with pytest.raises(TypeError, match="torch.Tensor"):
        build_lens(tiny_cnn, "conv_1")([[0.0]])


def test_input_that_does_not_fit_gives_a_clear_error(tiny_cnn):
    with pytest.raises(ValueError, match=r"input of shape \(1, 3, 8, 8\) does not fit"):
        build_lens(tiny_cnn, "conv_1")(torch.randn(1, 3, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_lens_runs_on_the_models_cuda_device(tiny_cnn):
    model = tiny_cnn.cuda()
    x = torch.randn(2, 1, 8, 8)
    out = build_lens(model, "conv_3")(x)["conv_3"]
    assert out.device.type == "cuda"
    torch.testing.assert_close(out, reference(model, 7, x.cuda()), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "writer",
    [nn.ReLU(inplace=True), nn.LeakyReLU(0.1, inplace=True), nn.ReLU6(inplace=True)],
    ids=["relu", "leaky_relu", "relu6"],
)
def test_a_target_before_an_in_place_op_keeps_its_values_and_the_layers_stay_in_place(writer):
    """The copy clones such a target once its version counter shows the write; the shared
    layers stay as they are."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Dropout(), writer, nn.Conv2d(3, 2, 1)).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        expected = model[0](x)
    assert (expected < 0).any()
    lens = build_lens(model, ["conv_1", "conv_2"], channels_last=False)
    for _ in range(2):
        out = lens(x)
        assert torch.equal(out["conv_1"], expected)
        with torch.no_grad():
            assert torch.equal(out["conv_2"], model(x))

    def flags(root: nn.Module) -> list[object]:
        return [getattr(m, "inplace", None) for m in root.modules() if not isinstance(m, Extractor)]

    assert flags(lens.net) == flags(model), "the lens changes no layer's in-place flag"
