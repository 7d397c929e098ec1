"""The image prior against numpy: the mean, the principal components, the spectrum, the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

import cnnlens.priors as prior_module
from cnnlens.models import demo_dataset, open_model
from cnnlens.priors import ImagePriorSpec, image_prior
from cnnlens.results import Cancelled
from cnnlens.store import ResultStore


@pytest.fixture(scope="module")
def digits():
    return demo_dataset()


def sample(demo, digits, images: int, seed: int, side: int = 28) -> np.ndarray:
    """The images the prior reads, read here: N×1×side×side float64."""
    names = digits.pick_many(seed, images)
    x = demo.batch([digits.load_image(name, "L") for name in names])
    if side != 28:
        x = F.interpolate(
            x, size=(side, side), mode="bilinear", antialias=True, align_corners=False
        )
    return x.double().numpy()


# Fewer images than pixels (the Gram matrix's route), and more (the SVD's).
@pytest.mark.parametrize(("images", "side"), [(100, 28), (300, 16)])
def test_the_components_are_numpys_pca_of_the_same_sample(demo, digits, images, side):
    prior = image_prior(demo, digits, side=side, images=images, components=24, seed=3)
    x = sample(demo, digits, images, seed=3, side=side)
    flat = x.reshape(images, -1)
    centred = flat - flat.mean(0)
    _, singular, vectors = np.linalg.svd(centred, full_matrices=False)
    assert prior.images == images and prior.components.shape == (24, side * side)
    np.testing.assert_allclose(prior.mean, x.mean(0), atol=1e-6)
    np.testing.assert_allclose(prior.deviations, singular[:24] / np.sqrt(images - 1), rtol=1e-4)
    # The same directions, up to sign; each sign fixed so the largest entry is positive.
    agreement = np.abs(np.sum(prior.components * vectors[:24], axis=1))
    np.testing.assert_allclose(agreement, 1, atol=1e-4)
    peaks = prior.components[np.arange(24), np.abs(prior.components).argmax(1)]
    assert (peaks > 0).all()
    np.testing.assert_allclose(prior.components @ prior.components.T, np.eye(24), atol=1e-4)


def test_the_spectrum_is_the_mean_magnitude_of_each_images_fft(demo, digits):
    prior = image_prior(demo, digits, images=300, components=8, seed=1)
    x = sample(demo, digits, 300, seed=1)
    expected = np.abs(np.fft.rfft2(x, norm="ortho")).mean(0)
    assert prior.spectrum.shape == (1, 28, 15)
    np.testing.assert_allclose(prior.spectrum, expected, rtol=1e-4, atol=1e-6)
    assert prior.pixel_mean.tolist() == [0.0] and prior.pixel_std.tolist() == [1.0]
    arrays = (prior.mean, prior.components, prior.deviations, prior.spectrum)
    assert prior.nbytes == sum(a.nbytes for a in arrays) + 8


def test_a_given_side_resizes_the_preprocessed_images(demo, digits):
    prior = image_prior(demo, digits, side=16, images=50, components=4)
    assert (prior.side, prior.channels) == (16, 1) and prior.spectrum.shape == (1, 16, 9)
    np.testing.assert_allclose(prior.mean, sample(demo, digits, 50, 0, side=16).mean(0), atol=1e-6)


def test_a_colour_model_gets_a_normalised_three_channel_prior(digits):
    resnet = open_model("resnet18")
    prior = image_prior(resnet, digits, side=16, images=20, components=4)
    assert prior.mean.shape == (3, 16, 16) and prior.spectrum.shape == (3, 16, 9)
    np.testing.assert_allclose(prior.pixel_mean, [0.485, 0.456, 0.406], rtol=1e-6)
    # Normalised: a black MNIST background lies below zero in every channel.
    assert (prior.mean[:, 0, 0] < 0).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"images": 1}, r"images must be a whole number, at least 2; got 1"),
        ({"components": 0}, r"components must be a whole number, at least 1; got 0"),
        ({"split": "valid"}, r"split must be 'train' or 'test'"),
        ({"side": 4}, r"at least 8"),
    ],
)
def test_bad_choices_raise_clear_errors(demo, digits, options, message):
    with pytest.raises(ValueError, match=message):
        image_prior(demo, digits, **options)


def test_progress_is_reported_and_a_stop_raises(demo, digits):
    seen = []
    image_prior(demo, digits, images=300, components=4, on_progress=lambda *a: seen.append(a))
    assert seen == [(256, 300), (300, 300)]
    with pytest.raises(Cancelled, match="Stopped after 0 of 300 images"):
        image_prior(demo, digits, images=300, should_stop=lambda: True)


def test_the_store_computes_a_prior_once_and_keys_its_settings_apart(
    demo, digits, tmp_path, monkeypatch
):
    spec = ImagePriorSpec(demo, digits, images=60, components=4)
    stored = ResultStore(tmp_path).run(spec)
    np.testing.assert_array_equal(
        stored.components, image_prior(demo, digits, images=60, components=4).components
    )
    monkeypatch.setattr(prior_module, "image_prior", None)  # computing again would fail
    again = ResultStore(tmp_path).run(ImagePriorSpec(demo, digits, images=60, components=4))
    np.testing.assert_array_equal(again.spectrum, stored.spectrum)
    assert again.images == 60 and not again.mean.flags.writeable
    keys = {
        spec.key,
        ImagePriorSpec(demo, digits, images=61, components=4).key,
        ImagePriorSpec(demo, digits, images=60, components=5).key,
        ImagePriorSpec(demo, digits, images=60, components=4, seed=1).key,
        ImagePriorSpec(demo, digits, side=16, images=60, components=4).key,
        ImagePriorSpec(demo, digits, images=60, components=4, split="test").key,
    }
    assert len(keys) == 6
    assert ImagePriorSpec(demo, digits, side=28, images=60, components=4).key == spec.key
