"""Feature accentuation of a real digit: the channel rises, the distance is what it says,
the same seed gives the same image, the caller's model is left as it was."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

from cnnlens.accentuation import Accentuation, accentuate
from cnnlens.legibility import load_pixels
from cnnlens.models import demo_dataset, demo_model

# Hundreds of small forwards: one intra-op thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 24  # enough for the channel to rise; the default is 128


@pytest.fixture(scope="module")
def digit(demo) -> torch.Tensor:
    return load_pixels(demo, demo_dataset(), images=2)[1]


@pytest.fixture(scope="module")
def accentuated(demo, digit) -> Accentuation:
    return accentuate(demo, "conv_2", 1, digit, steps=STEPS)


def channel_mean(image: torch.Tensor, channel: int) -> float:
    """conv_2's channel mean on one image, from a plain forward of a fresh demo CNN."""
    with torch.no_grad():
        return float(demo_model().features[:3](image[None])[0, channel].mean())


def test_the_channel_rises_and_before_and_after_are_its_means(accentuated, digit):
    assert accentuated.after > accentuated.before
    assert accentuated.before == pytest.approx(channel_mean(digit, 1), abs=1e-5)
    assert accentuated.after == pytest.approx(channel_mean(accentuated.image, 1), abs=1e-5)
    assert accentuated.steps == STEPS


def test_the_result_is_an_image_at_the_reported_distance(accentuated, digit):
    image = accentuated.image
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    distance = float(torch.sqrt(((image.double() - digit.double()) ** 2).sum()))
    assert accentuated.distance == pytest.approx(distance, rel=1e-5)
    assert accentuated.distance > 0


def test_a_stronger_penalty_stays_closer(demo, digit, accentuated):
    loose = accentuate(demo, "conv_2", 1, digit, steps=STEPS, strength=0.3)
    assert loose.distance > accentuated.distance
    assert loose.after > accentuated.after


def test_a_deeper_layer_rises_too(demo, digit):
    result = accentuate(demo, "conv_4", 0, digit[None], steps=STEPS)
    assert result.after > result.before


def test_same_seed_same_image_other_seed_other_image(demo, digit, accentuated):
    again = accentuate(demo, "conv_2", 1, digit, steps=STEPS)
    assert torch.equal(again.image, accentuated.image)
    assert again.distance == accentuated.distance
    other = accentuate(demo, "conv_2", 1, digit, steps=STEPS, seed=1)
    assert not torch.equal(other.image, accentuated.image)


def test_the_callers_model_is_untouched_and_no_hook_is_left(digit):
    model = demo_model().train()
    model.features[0].weight.requires_grad_(False)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    result = accentuate(model, "conv_2", 3, digit, steps=8)
    assert result.image.shape == (1, 28, 28)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
        assert value.is_contiguous(), name  # not converted to channels-last
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_a_loaded_models_shared_copy_keeps_no_graph_or_grad(demo, digit):
    hooks = sum(len(m._forward_hooks) for m in demo.private_copy.model.modules())
    accentuate(demo, "conv_2", 0, digit, steps=4)
    assert sum(len(m._forward_hooks) for m in demo.private_copy.model.modules()) == hooks
    assert all(p.grad is None for p in demo.model.parameters())


class Unrolled(nn.Module):
    """A conv whose maps are flattened to N×C×HW: a layer that gives no maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.unroll = nn.Flatten(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unroll(self.conv(x)).mean(2)


def test_bad_input_raises_sentences_naming_the_choices(demo, digit):
    with pytest.raises(ValueError, match=r"1×14×14.*the model takes 1×28×28.*size=28"):
        accentuate(demo, "conv_2", 0, digit[:, :14, :14])
    with pytest.raises(ValueError, match="Unknown layer 'conv_9'. Valid layers: conv_1"):
        accentuate(demo, "conv_9", 0, digit)
    with pytest.raises(ValueError, match="conv_2 has channels 0 to 31; got 32"):
        accentuate(demo, "conv_2", 32, digit)
    with pytest.raises(ValueError, match="3-D outputs.*choose a convolutional or linear layer"):
        accentuate(Unrolled(), "unroll", 0, digit)
    with pytest.raises(ValueError, match="one image"):
        accentuate(demo, "conv_2", 0, digit.expand(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
        accentuate(demo, "conv_2", 0, digit * 255)
    with pytest.raises(ValueError, match="steps must be"):
        accentuate(demo, "conv_2", 0, digit, steps=0)
    with pytest.raises(ValueError, match="strength must be"):
        accentuate(demo, "conv_2", 0, digit, strength=-1.0)
    with pytest.raises(TypeError, match="channel is one whole number"):
        accentuate(demo, "conv_2", [0, 1], digit)
    with pytest.raises(TypeError, match="torch.from_numpy"):
        accentuate(demo, "conv_2", 0, digit.numpy())


def test_the_example_holds():
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(accentuate, "accentuate", globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0
