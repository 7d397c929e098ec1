"""One private copy per loaded model: many target sets, many threads, exact values, no leaks."""

from __future__ import annotations

import copy
import gc
import threading
import weakref
from functools import partial

import pytest
import torch
from torch import nn
from torchvision import models

from cnnlens.layers import layer_names
from cnnlens.models import open_model
from cnnlens.private_copy import PrivateCopy

# Ten target sets of the demo CNN; conv_1..conv_4 are each followed by an in-place ReLU.
DEMO_SETS = [
    ("conv_1",),
    ("relu_1",),
    ("conv_1", "relu_1"),
    ("conv_2", "pool_2"),
    ("conv_3",),
    ("conv_1", "conv_2", "conv_3", "conv_4"),
    ("relu_2", "conv_4"),
    ("pool_2", "relu_3"),
    ("conv_4", "relu_4", "pool_4"),
    ("conv_2",),
]

RESNET_SETS = [
    ("layer1.0.bn1",),
    ("layer1.0.bn2", "layer1"),
    ("conv1", "bn1", "relu"),
    ("layer2.0.conv1",),
    ("layer2", "layer3.1.bn2"),
    ("layer1.1.relu", "layer3"),
    ("maxpool",),
    ("layer2.1.bn2", "layer4.0.downsample.0"),
    ("layer4",),
    ("bn1", "layer1.0.conv2", "layer2.0.bn2"),
]


def independent_outputs(
    model: nn.Module, names: list[str], x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each named module's output, cloned by a hook (returning None) on a fresh copy of the
    model whose in-place ops are switched off: nothing can write into what is kept."""
    own = copy.deepcopy(model).eval()
    for module in own.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    kept: dict[str, torch.Tensor] = {}

    def keep(name: str, module: nn.Module, args: object, output: torch.Tensor) -> None:
        kept.setdefault(name, output.clone())

    for name in names:
        own.get_submodule(name).register_forward_hook(partial(keep, name))
    with torch.no_grad():
        own(x.clone())
    return kept


@pytest.fixture(scope="module")
def resnet():
    return open_model("resnet18", weights="random")


def test_one_copy_serves_ten_target_sets_of_the_demo_with_exact_values(demo):
    x = torch.rand(3, 1, 28, 28)
    paths = {name: demo.layers.path(name) for name in demo.layer_names()}
    expected = independent_outputs(demo.model, list(paths.values()), x)
    extractors = [demo.extractor(list(targets)) for targets in DEMO_SETS]
    for targets, extract in zip(DEMO_SETS, extractors, strict=True):
        out = extract(x)
        assert tuple(out) == demo.layers.check(targets)
        for name in targets:
            torch.testing.assert_close(out[name], expected[paths[name]], rtol=1e-5, atol=1e-5)
            if name.startswith("conv"):
                assert (out[name] < 0).any(), f"{name} kept its values before the in-place ReLU"
    # Every lens runs the same modules: the loaded model's private copy.
    copy_modules = {id(m) for m in demo.private_copy.model.modules()}
    for lens in extractors:
        assert all(
            id(m) in copy_modules
            for m in lens.net.children()
            if m.__class__.__name__ != "Extractor"
        )


def test_one_copy_serves_ten_target_sets_of_resnet18_with_exact_values(resnet):
    x = torch.randn(2, 3, 64, 64)
    names = sorted({name for targets in RESNET_SETS for name in targets})
    expected = independent_outputs(resnet.model, names, x)
    for targets in RESNET_SETS:
        out = resnet.extractor(list(targets))(x)
        for name in targets:
            torch.testing.assert_close(out[name], expected[name], rtol=1e-4, atol=1e-4, msg=name)
    assert (expected["layer1.0.bn2"] < 0).any(), "out += identity and ReLU follow this target"


def test_the_copy_shares_the_loaded_models_tensors_and_leaves_the_model_alone(resnet):
    before = {k: (v.data_ptr(), v.clone()) for k, v in resnet.model.state_dict().items()}
    for targets in RESNET_SETS:
        resnet.extractor(list(targets))(torch.randn(1, 3, 32, 32))
    own = dict(resnet.private_copy.model.named_parameters())
    for name, param in resnet.model.named_parameters():
        assert own[name] is param, "the copy keeps the model's own tensors, not copies"
    assert resnet.private_copy.model is not resnet.model
    assert all(not m._forward_hooks for m in resnet.model.modules()), "hooks live on the copy"
    assert all(m.inplace for m in resnet.model.modules() if isinstance(m, nn.ReLU))
    for key, value in resnet.model.state_dict().items():
        assert value.data_ptr() == before[key][0] and torch.equal(value, before[key][1]), key


@pytest.mark.parametrize("which", ["demo", "resnet"])
def test_eight_threads_with_different_target_sets_on_one_model(which, request):
    loaded = request.getfixturevalue(which)
    sets = DEMO_SETS[:8] if which == "demo" else RESNET_SETS[:8]
    shape = (2, 1, 28, 28) if which == "demo" else (2, 3, 48, 48)
    torch.manual_seed(1)
    inputs = [torch.randn(shape) for _ in sets]
    expected = [loaded.extractor(list(t))(x) for t, x in zip(sets, inputs, strict=True)]
    failures: list[str] = []
    barrier = threading.Barrier(len(sets))

    def run(i: int) -> None:
        barrier.wait()
        for _ in range(5):
            out = loaded.extractor(list(sets[i]))(inputs[i])
            if tuple(out) != loaded.layers.check(sets[i]):  # network order
                failures.append(f"thread {i}: got {list(out)}")
            for name in sets[i]:
                if not torch.allclose(out[name], expected[i][name], rtol=1e-5, atol=1e-5):
                    failures.append(f"thread {i}: {name} differs")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


def test_a_dropped_extractor_is_freed_at_once_without_the_garbage_collector(demo, resnet):
    gc.disable()
    try:
        for loaded, targets in ((demo, ["conv_2"]), (resnet, ["layer1", "layer2.0.bn1"])):
            extract = loaded.extractor(targets)
            extract(torch.randn(1, *loaded.spec.shape))
            gone = weakref.ref(extract)
            del extract
            assert gone() is None
        own = PrivateCopy(models.resnet18())
        model_gone, copy_gone = weakref.ref(own.model), weakref.ref(own)
        own.capture(torch.randn(1, 3, 32, 32), ("layer1",))
        del own
        assert copy_gone() is None and model_gone() is None, "no cycle keeps a copy alive"
    finally:
        gc.enable()


def test_layers_know_names_paths_and_modules(demo, resnet):
    assert demo.layers.renamed and not resnet.layers.renamed
    assert demo.layers.path("conv_2") == "features.2"
    assert demo.layers.module("conv_2") is demo.model.features[2]
    assert resnet.layers.path("layer1.0.conv1") == "layer1.0.conv1"
    with pytest.raises(
        ValueError, match=r"Unknown module 'layer9'\. Close matches: 'layer4', 'layer3'"
    ):
        resnet.layers.check(["layer9"])
    with pytest.raises(ValueError, match=r"Unknown layer 'conv_9'\. Valid layers: conv_1"):
        demo.extractor(["conv_9"])
    with pytest.raises(TypeError, match="ResNet has no renamed layers"):
        layer_names(models.resnet18())
    # Both names of a renamed layer work, in network order.
    assert demo.layers.check(["features.2", "conv_1", "classifier.2"]) == (
        "conv_1",
        "features.2",
        "classifier.2",
    )
    assert demo.layers.module("features.2") is demo.layers.module("conv_2")


class _Pointers:
    """A call that records where a ReLU's input and output live, and may keep its input."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.seen: dict[str, int] = {}

    def keeps(self, tensor: object) -> bool:
        return self.keep

    def on_output(self, path: str, inputs: tuple, output: object) -> None:
        if path == "1":
            self.seen = {"input": inputs[0].data_ptr(), "output": output.data_ptr()}


def test_an_in_place_module_runs_out_of_place_only_on_what_a_call_keeps():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Conv2d(2, 2, 1))
    own = PrivateCopy(model, channels_last=False)
    x = torch.randn(1, 1, 6, 6)
    with torch.no_grad():
        for keep, same in ((False, True), (True, False)):
            call = _Pointers(keep)
            own.run(x, call)
            assert (call.seen["input"] == call.seen["output"]) is same
        maps = own.capture(x, ("0", "2"))
        expected = model[0](x)
    assert (expected < 0).any() and torch.equal(maps["0"], expected)
    assert own._copied == frozenset(), "kept without a copy: the ReLU wrote a new tensor"
    assert own.model[1].inplace and model[1].inplace  # no flag changed


def test_a_module_with_a_forward_of_its_own_keeps_it():
    relu = nn.ReLU(inplace=True)
    relu.forward = lambda x: x * 0 + 7  # the owner's own forward, set on the instance
    model = nn.Sequential(nn.Conv2d(1, 2, 3), relu)
    maps = PrivateCopy(model).capture(torch.randn(1, 1, 5, 5), ("0", "1"))
    assert (maps["1"] == 7).all() and not (maps["0"] == 7).all()


def test_run_to_stops_at_a_module_or_goes_on_from_a_replacement(demo):
    source = demo.private_copy
    x = source.prepare(torch.rand(2, 1, 28, 28))
    with torch.no_grad():
        reached = source.run_to(x, "features.2")
        expected = demo.model.features[:3](x)
        assert reached.result is None and torch.equal(reached.output, expected)
        assert reached.inputs[0].shape == (2, 32, 28, 28)
        zeroed = source.run_to(x, "classifier", replace=torch.zeros_like)
        assert torch.equal(zeroed.result, torch.zeros(2, 10))
        untouched = source.run_to(x, "features.2", replace=lambda output: None)
        torch.testing.assert_close(untouched.result, demo.model(x))


def test_one_error_names_a_module_the_forward_does_not_call():
    from cnnlens.private_copy import ModuleNotRun

    own = PrivateCopy(models.googlenet(init_weights=False, aux_logits=True))
    x = torch.randn(1, 3, 64, 64)
    message = r"Module 'aux1' did not run in the forward pass \(in eval mode\).*choose modules"
    for run in (lambda: own.run_to(x, "aux1"), lambda: own.capture(x, ("conv1", "aux1"))):
        with pytest.raises(ModuleNotRun, match=message) as caught:
            run()
        assert caught.value.paths == ("aux1",) and isinstance(caught.value, ValueError)
