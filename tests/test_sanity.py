"""The sanity check (Adebayo et al. 2018): which modules each step randomises, checked against
the trained weights; the caller's model untouched; seeds; and what the maps do."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens.attribution import attribute
from cnnlens.layers import Layers
from cnnlens.models import demo_dataset
from cnnlens.sanity import (
    SANITY_THRESHOLD,
    SanityStep,
    randomisation_steps,
    randomised_copies,
    rank_correlation,
    sanity_check,
    shows_image_more_than_model,
)

# The demo's modules with parameters, top down, written out here (not asked of cnnlens).
DEMO_TOP_DOWN = [
    "classifier.5",
    "classifier.2",
    "features.7",
    "features.5",
    "features.2",
    "features.0",
]
DEMO_NAMES = ["classifier.5", "classifier.2", "conv_4", "conv_3", "conv_2", "conv_1"]


@pytest.fixture(scope="module")
def digits(demo) -> torch.Tensor:
    dataset = demo_dataset()
    names = [dataset.pick(128), *dataset.rows("train")["filename"].tolist()[:2]]
    return demo.batch([dataset.load_image(name) for name in names])


def tensors_of(model: nn.Module, path: str) -> dict[str, torch.Tensor]:
    module = model.get_submodule(path)
    return dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))


def test_each_step_randomises_exactly_the_modules_above_it(demo, digits):
    trained = demo.model
    x = digits[:1]
    for k, (name, paths, randomised) in enumerate(randomised_copies(demo, x, seed=3)):
        assert name == DEMO_NAMES[k] and paths == (DEMO_TOP_DOWN[k],)
        for i, path in enumerate(DEMO_TOP_DOWN):
            for key, value in tensors_of(randomised, path).items():
                original = tensors_of(trained, path)[key]
                if i <= k:  # randomised: (almost) no value left as it was
                    same = torch.isclose(value, original).float().mean()
                    assert same < 0.01, f"{path}.{key} at step {k}"
                else:
                    assert torch.equal(value, original), f"{path}.{key} changed at step {k}"


def test_the_callers_model_is_untouched(demo, digits):
    before = {key: value.clone() for key, value in demo.model.state_dict().items()}
    steps = sanity_check(demo, digits[:1], "gradcam")
    assert len(steps) == 6
    for key, value in demo.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not demo.model.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in demo.model.modules())


def test_a_plain_module_with_batch_norm_keeps_its_statistics(tiny_cnn):
    model = nn.Sequential(*tiny_cnn, nn.Flatten(), nn.Linear(32, 3)).eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    x = torch.rand(1, 1, 8, 8)
    steps = sanity_check(model, x, "gradcam", layer="5")
    # The BatchNorm goes with the conv before it; the renamed layers name each step.
    assert [(s.layer, s.modules) for s in steps] == [
        ("linear_3", ("11",)),
        ("conv_3", ("7",)),
        ("conv_2", ("4",)),
        ("conv_1", ("0", "1")),
    ]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    *_, (_, _, randomised) = randomised_copies(model, x, seed=0)
    assert torch.equal(randomised[1].running_mean, torch.zeros(4))
    assert torch.equal(randomised[1].running_var, torch.ones(4))
    assert all(step.map.layer == "relu_2" for step in steps)


def test_resnet_steps_are_its_blocks_top_down():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    names = [name for name, _ in randomisation_steps(resnet18().eval(), torch.rand(1, 3, 32, 32))]
    blocks = [f"layer{i}.{j}" for i in (4, 3, 2, 1) for j in (1, 0)]
    assert names == ["fc", *blocks, "conv1"]


def test_the_cascade_ends_far_from_the_trained_grad_cam(demo, digits):
    for i in range(len(digits)):
        steps = sanity_check(demo, digits[i : i + 1], "gradcam")
        assert [step.layer for step in steps] == DEMO_NAMES
        assert steps[-1].correlation < SANITY_THRESHOLD
        assert not shows_image_more_than_model(steps)


def test_steps_use_the_trained_maps_layer_and_class(demo, digits):
    x = digits[:1]
    trained = attribute(demo, x, "gradcam", layer="conv_3", target=4)
    steps = sanity_check(demo, x, "gradcam", layer="conv_3", target=4)
    assert trained.layer == "relu_3"
    # A deep copy of the model names its layers as the LoadedModel does.
    assert Layers(copy.deepcopy(demo.model)).names == demo.layers.names
    assert all(step.map.layer == "relu_3" and step.map.target == 4 for step in steps)
    assert steps[0].correlation == pytest.approx(rank_correlation(steps[0].map, trained))


def test_seeds_give_the_same_maps_and_the_one_step_equals_the_cascades_end(demo, digits):
    x = digits[:1]
    first = sanity_check(demo, x, "saliency", seed=5)
    again = sanity_check(demo, x, "saliency", seed=5)
    other = sanity_check(demo, x, "saliency", seed=6)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.map, b.map)
        assert a.correlation == b.correlation
    assert not np.array_equal(first[-1].map, other[-1].map)
    (whole,) = sanity_check(demo, x, "saliency", seed=5, cascade=False)
    assert isinstance(whole, SanityStep)
    assert whole.layer == "conv_1" and whole.modules == tuple(DEMO_TOP_DOWN)
    np.testing.assert_allclose(whole.map, first[-1].map, rtol=1e-5, atol=1e-7)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation of the ranks (maps without ties)."""
    ranks = [np.argsort(np.argsort(np.abs(m).ravel())).astype(float) for m in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def test_rank_correlation_is_spearmans_on_absolute_values():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 7)), rng.normal(size=(6, 7))
    assert rank_correlation(a, b) == pytest.approx(spearman(a, b))
    assert rank_correlation(a, -a) == pytest.approx(1.0)
    assert rank_correlation(a, np.zeros((6, 7))) == 0.0
    with pytest.raises(ValueError, match="cannot be compared"):
        rank_correlation(a, b[:3])


def test_the_verdict_reads_the_last_step():
    def step(correlation: float) -> SanityStep:
        return SanityStep("conv_1", ("features.0",), np.zeros((2, 2)), correlation)

    assert shows_image_more_than_model([step(0.1), step(0.5)])
    assert not shows_image_more_than_model([step(0.9), step(0.49)])
    with pytest.raises(ValueError, match="at least one step"):
        shows_image_more_than_model([])


def test_errors_come_from_the_attribution(demo, digits):
    with pytest.raises(ValueError, match="Unknown attribution method"):
        sanity_check(demo, digits[:1], "lime")
    with pytest.raises(ValueError, match="one image"):
        sanity_check(demo, digits[:2], "gradcam")
