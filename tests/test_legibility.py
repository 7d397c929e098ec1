"""The legibility measures against references computed here: hand-made images, plain
forward hooks on a fresh demo CNN, brute-force nearest neighbours."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens.legibility import (
    fires,
    legibility_table,
    load_pixels,
    median_activation,
    near_uniform,
    penultimate_features,
    plausibility,
    reference_features,
)
from cnnlens.models import demo_dataset, demo_model

# Hundreds of small forwards: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return demo_dataset()


@pytest.fixture(scope="module")
def train(demo, digits) -> torch.Tensor:
    return load_pixels(demo, digits, images=300)


@pytest.fixture(scope="module")
def probes(demo, digits) -> torch.Tensor:
    """Twenty test digits and two noise images."""
    noise = torch.rand((2, 1, 28, 28), generator=torch.Generator().manual_seed(3))
    return torch.cat([load_pixels(demo, digits, split="test", images=20), noise])


def hooked(module: nn.Module, images: torch.Tensor, *, inputs: bool) -> torch.Tensor:
    """One module's input (or output) in a plain forward of a fresh demo CNN."""
    model = demo_model()
    kept: list[torch.Tensor] = []

    def keep(m: nn.Module, args: tuple, output: torch.Tensor) -> None:
        kept.append((args[0] if inputs else output).detach().clone())

    target = model.get_submodule(module)
    handle = target.register_forward_hook(keep)  # returns None: the output is left as it is
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return kept[0]


def test_near_uniform_on_hand_made_images():
    uniform = torch.full((1, 28, 28), 0.7)
    half = torch.zeros((1, 28, 28))
    half[:, :, 14:] = 1
    noise = torch.rand((1, 28, 28), generator=torch.Generator().manual_seed(0))
    mostly = torch.zeros((1, 20, 20))
    mostly.view(-1)[:56] = 1  # 86% of the pixels at the median (0), 14% far from it
    fewer = torch.zeros((1, 20, 20))
    fewer.view(-1)[:64] = 1  # 84%
    images = [uniform, half, noise]
    assert near_uniform(torch.stack(images)).tolist() == [True, False, False]
    assert near_uniform(torch.stack([mostly, fewer])).tolist() == [True, False]
    assert near_uniform(np.stack([mostly.numpy()]), share=0.9).tolist() == [False]


def test_near_uniform_takes_the_largest_channel_distance_for_colour():
    flat = torch.full((3, 16, 16), 0.2)
    one_noisy = flat.clone()
    one_noisy[2] = torch.rand((16, 16), generator=torch.Generator().manual_seed(1))
    assert near_uniform(torch.stack([flat, one_noisy])).tolist() == [True, False]


def test_near_uniform_refuses_bad_input():
    with pytest.raises(ValueError, match="N×C×H×W"):
        near_uniform(torch.zeros((28, 28)))
    with pytest.raises(ValueError, match=r"share is a fraction"):
        near_uniform(torch.zeros((1, 1, 8, 8)), share=1.5)


def test_plausibility_equals_brute_force_nearest_neighbours(demo, train, probes):
    reference = hooked("classifier.5", train, inputs=True).numpy()
    features = hooked("classifier.5", probes, inputs=True).numpy()
    gaps = np.sqrt(((features[:, None, :] - reference[None, :, :]) ** 2).sum(-1))
    expected = gaps.min(axis=1)
    for model in (demo, demo_model()):
        stored = penultimate_features(model, train)
        np.testing.assert_allclose(stored, reference, rtol=1e-5, atol=1e-5)
        found = plausibility(model, probes, stored)
        np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-4)
    assert found[-2:].min() > np.median(found[:-2])  # noise is farther than digits


def test_reference_features_of_a_dataset_equal_those_of_its_pixels(demo, digits, train):
    np.testing.assert_array_equal(
        reference_features(demo, digits, images=300), penultimate_features(demo, train)
    )


class LastDefinedFirst(nn.Module):
    """The head is defined before the hidden layer, but called after it."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(5, 2)
        self.conv = nn.Conv2d(1, 3, 3)
        self.hidden = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(x).mean(dim=(2, 3))
        return self.head(torch.relu(self.hidden(pooled)))


def test_the_penultimate_features_are_the_input_of_the_last_linear_called():
    torch.manual_seed(0)
    model = LastDefinedFirst().eval()
    images = torch.rand((4, 1, 10, 10))
    kept = []
    handle = model.head.register_forward_hook(lambda m, args, out: kept.append(args[0].clone()))
    with torch.no_grad():
        model(images)
    handle.remove()
    torch.testing.assert_close(torch.from_numpy(penultimate_features(model, images)), kept[0])
    by_layer = penultimate_features(model, images, layer="conv")
    assert by_layer.shape == (4, 3 * 8 * 8)


def test_a_model_without_linear_needs_a_layer():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(ValueError, match="calls no nn.Linear.*pass layer="):
        penultimate_features(model, torch.rand((1, 1, 8, 8)))


def test_plausibility_refuses_a_reference_of_other_features(demo, probes):
    with pytest.raises(ValueError, match="compute it with reference_features"):
        plausibility(demo, probes, np.zeros((5, 7), dtype=np.float32))


def test_fires_equals_a_hand_hook(demo, probes):
    conv_2 = hooked("features.2", probes, inputs=False)  # before the in-place ReLU
    expected = conv_2.mean(dim=(2, 3))
    found = fires(demo, "conv_2", [0, 5, 31], probes)
    np.testing.assert_allclose(found, expected[:, [0, 5, 31]].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fires(demo, "conv_2", 5, probes), found[:, 1], rtol=1e-6)
    units = fires(demo, "classifier.2", [3], probes)  # a 2-D output: the unit's value
    plain = hooked("classifier.2", probes, inputs=False)[:, 3]
    np.testing.assert_allclose(units[:, 0], plain, rtol=1e-5, atol=1e-5)


def test_median_activation_is_the_median_over_the_images(demo, digits, train):
    medians = median_activation(demo, "conv_2", [1, 2], digits, images=300)
    expected = np.median(fires(demo, "conv_2", [1, 2], train), axis=0)
    np.testing.assert_allclose(medians, expected, rtol=1e-6)
    assert median_activation(demo, "conv_2", 2, digits, images=300) == pytest.approx(expected[1])


def test_measures_refuse_bad_input_with_sentences(demo, probes):
    with pytest.raises(ValueError, match="Unknown layer 'conv_9'"):
        fires(demo, "conv_9", 0, probes)
    with pytest.raises(ValueError, match="conv_2 has channels 0 to 31; got 32"):
        fires(demo, "conv_2", [32], probes)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\].*before normalisation"):
        fires(demo, "conv_2", 0, probes * 3)
    with pytest.raises(ValueError, match="model's 1 channel"):
        penultimate_features(demo, probes.expand(-1, 3, -1, -1))
    with pytest.raises(TypeError, match="torch.from_numpy"):
        fires(demo, "conv_2", 0, probes.numpy())


def test_the_table_counts_and_compares_each_method(demo, digits, train):
    channels = list(range(4))
    flat = torch.full((4, 1, 28, 28), 0.9)
    noise = torch.rand((4, 1, 28, 28), generator=torch.Generator().manual_seed(2))
    reference = penultimate_features(demo, train)
    medians = np.median(fires(demo, "conv_1", channels, train), axis=0)
    table = legibility_table(
        demo,
        "conv_1",
        channels,
        {"lucid": noise, "flat": flat},
        digits,
        reference=reference,
        medians=medians,
        real=30,
    )
    assert list(table.index) == ["lucid", "flat", "real images"]
    assert table["near_uniform"].tolist()[:2] == [0, 4]
    assert table.loc["lucid", "vs_baseline"] == 1.0
    expected = np.median(plausibility(demo, flat, reference))
    assert table.loc["flat", "plausibility"] == pytest.approx(expected)
    own = fires(demo, "conv_1", channels, flat)[np.arange(4), np.arange(4)]
    assert table.loc["flat", "fires"] == int((own >= medians).sum())
    assert table.loc["real images", "images"] == 30
    assert table["fires"].isna().tolist() == [False, False, True]
    with pytest.raises(ValueError, match="one image per channel"):
        legibility_table(demo, "conv_1", channels, {"lucid": noise[:3]}, digits, real=0)


def test_the_example_holds():
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(plausibility, "plausibility", globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0
