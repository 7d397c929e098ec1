"""One image's maps and probabilities from one forward: the same values as two forwards
(the extractor's, stopped at the deepest target, and the full model's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from cnnlens import demo_dataset, open_model
from cnnlens.one_image import image_features, maps_and_logits


def _two_forwards(loaded, pixels: np.ndarray, targets: list[str]):
    """The maps from the extractor, and the probabilities from the full model."""
    batch = loaded.batch(pixels)
    maps = loaded.extractor(targets)(batch)
    return {name: value[0].numpy() for name, value in maps.items()}, loaded.probabilities(batch)[0]


def test_one_forward_gives_the_demos_maps_and_probabilities_of_two():
    loaded = open_model("demo")
    pixels = np.asarray(demo_dataset().load_image("3282.png"))
    targets = ["conv_4", "conv_1", "relu_1", "pool_2"]
    found = image_features(loaded, pixels, targets)
    maps, probabilities = _two_forwards(loaded, pixels, targets)
    assert list(found.maps) == ["conv_1", "relu_1", "pool_2", "conv_4"]  # network order
    for name, expected in maps.items():
        np.testing.assert_array_equal(found.maps[name], expected)
    # conv_1 as it was before the in-place ReLU after it wrote into the forward's tensor.
    assert (found.maps["conv_1"] < 0).any()
    np.testing.assert_array_equal(found.maps["relu_1"], np.maximum(found.maps["conv_1"], 0))
    np.testing.assert_allclose(found.probabilities, probabilities, rtol=1e-6, atol=1e-7)
    assert int(np.argmax(found.probabilities)) == 9 and found.probabilities.sum() == pytest.approx(
        1
    )


def test_one_forward_is_exact_through_a_residual_networks_in_place_adds(tmp_path):
    torch.manual_seed(7)
    path = tmp_path / "seven.pt"
    torch.save(tvm.resnet18(num_classes=7).state_dict(), path)
    loaded = open_model("resnet18", weights=path)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (100, 130, 3), dtype=np.uint8)
    # layer1.0.bn2's output is written by the block's `out += identity`; relu is shared.
    targets = ["layer1.0.bn2", "layer1.0.relu", "layer2", "conv1"]
    found = image_features(loaded, pixels, targets)
    maps, probabilities = _two_forwards(loaded, pixels, targets)
    for name, expected in maps.items():
        np.testing.assert_allclose(found.maps[name], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(found.probabilities, probabilities, rtol=1e-5, atol=1e-6)


def test_a_target_that_is_not_a_layer_or_does_not_run_is_a_clear_error():
    loaded = open_model("demo")
    batch = loaded.batch(np.zeros((28, 28), np.uint8))
    with pytest.raises(ValueError, match="conv_9"):
        maps_and_logits(loaded, batch, ["conv_9"])
    with pytest.raises(ValueError, match="does not fit"):
        maps_and_logits(loaded, torch.zeros(1, 3, 5, 5), ["conv_1"])
