"""cnnlens.attribution: every method against an independent reference written here from its
paper's formula (plain hooks and autograd on a copy of the plain model, numpy), the layer
rules of CAMs, the caller's model left alone, threads, and the errors."""

from __future__ import annotations

import copy
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from cnnlens.attribution import (
    CAM_METHODS,
    INPUT_METHODS,
    METHODS,
    AttributionMap,
    attribute,
    cam_layer,
    occlusion_scores,
)
from cnnlens.gradcam import grad_cam
from cnnlens.models import demo_dataset, open_model
from cnnlens.results import Cancelled

GRADIENT_CAMS = CAM_METHODS[:5]


@pytest.fixture(scope="module")
def digits(demo):
    dataset = demo_dataset()
    names = list(dataset.index["filename"][:100])
    return demo.batch([dataset.load_image(name) for name in names])


@pytest.fixture(scope="module")
def digit(demo):
    dataset = demo_dataset()
    return demo.batch(dataset.load_image(dataset.pick(128)))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return resnet18().eval()


@pytest.fixture(scope="module")
def photo():
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


class EndsInNorm(nn.Module):
    """A classifier whose last maps come from BatchNorm and a functional ReLU (as DenseNet's)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


def small_classifier() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(96, 5),
    )


# --- independent references ------------------------------------------------------------


def plain(model):
    """A copy of the plain module to run the references on (a LoadedModel's own model)."""
    return copy.deepcopy(getattr(model, "model", model)).eval()


def maps_and_gradient(model, x, path, target=None):
    """The module's output and d logit / d output, by a forward hook and autograd."""
    net = plain(model)
    kept = {}

    def keep(module, inputs, output):
        kept.setdefault("maps", output)
        return None  # a hook that returns a value replaces the output

    handle = net.get_submodule(path).register_forward_hook(keep)
    logits = net(x.clone().requires_grad_(True))
    handle.remove()
    target = int(logits[0].argmax()) if target is None else target
    (gradient,) = torch.autograd.grad(logits[0, target], kept["maps"])
    as_numpy = lambda t: t[0].detach().double().numpy()  # noqa: E731
    return as_numpy(kept["maps"]), as_numpy(gradient), target


def upsample(cam, size):
    return F.interpolate(torch.from_numpy(cam)[None, None], size=size, mode="bilinear")[
        0, 0
    ].numpy()


def reference_cam(method, maps, grads):
    """The published formulas, in numpy, on K×h×w maps and gradients."""
    per_channel = lambda a: a.sum(axis=(1, 2))[:, None, None]  # noqa: E731
    if method == "gradcam":  # Selvaraju et al. 2017
        cam = (grads.mean(axis=(1, 2))[:, None, None] * maps).sum(0)
    elif method == "gradcam++":  # Chattopadhyay et al. 2018, exponential score
        alpha = grads**2 / (2 * grads**2 + per_channel(maps) * grads**3 + 1e-6)
        alpha = np.where(grads != 0, alpha, 0)
        cam = ((alpha * np.maximum(grads, 0)).sum(axis=(1, 2))[:, None, None] * maps).sum(0)
    elif method == "xgradcam":  # Fu et al. 2020
        weights = (maps / (per_channel(maps) + 1e-7) * grads).sum(axis=(1, 2))
        cam = (weights[:, None, None] * maps).sum(0)
    elif method == "layercam":  # Jiang et al. 2021
        cam = (np.maximum(grads, 0) * maps).sum(0)
    else:  # HiResCAM, Draelos & Carin 2020
        cam = (grads * maps).sum(0)
    return np.maximum(cam, 0)


def reference_eigen_cam(maps):
    flat = maps.reshape(len(maps), -1).T
    flat = flat - flat.mean(axis=0)
    projection = flat @ np.linalg.svd(flat, full_matrices=False)[2][0]
    total = maps.sum(0).reshape(-1)
    if projection @ (total - total.mean()) < 0:
        projection = -projection
    return np.maximum(projection, 0).reshape(maps.shape[1:])


def reference_score_cam(model, x, path, target, max_channels=None):
    """Wang et al. 2020's loop, one masked forward per channel."""
    maps, _, _ = maps_and_gradient(model, x, path, target)
    net = plain(model)
    channels = range(len(maps))
    if max_channels is not None:
        channels = np.argsort(-maps.reshape(len(maps), -1).var(axis=1), kind="stable")[
            :max_channels
        ]
    cam = np.zeros(maps.shape[1:])
    for k in channels:
        up = F.interpolate(
            torch.from_numpy(maps[k])[None, None].float(), x.shape[-2:], mode="bilinear"
        )
        if up.max() == up.min():
            mask = torch.zeros_like(up)
        else:
            mask = (up - up.min()) / (up.max() - up.min())
        with torch.no_grad():
            weight = torch.softmax(net(x * mask), dim=1)[0, target].item()
        cam += weight * maps[k]
    return upsample(np.maximum(cam, 0).astype(np.float32), x.shape[-2:])


def saliency_of(net, x, target):
    points = x.clone().requires_grad_(True)
    logits = net(points)
    (gradient,) = torch.autograd.grad(logits[:, target].sum(), points)
    return gradient.abs().amax(dim=1)


def close(found, expected, rtol=1e-5):
    np.testing.assert_allclose(found, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


# --- CAMs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", GRADIENT_CAMS)
def test_gradient_cams_equal_their_formulas_on_the_demo_and_resnet(
    method, demo, digit, resnet, photo
):
    for model, x, layer, path in (
        (demo, digit, "relu_4", "features.8"),
        (resnet, photo, "layer4", "layer4"),
        (resnet, photo, "layer3.0.relu", "layer3.0.relu"),
    ):
        found = attribute(model, x, method, layer=layer, target=3)
        maps, grads, _ = maps_and_gradient(model, x, path, target=3)
        expected = upsample(reference_cam(method, maps, grads).astype(np.float32), x.shape[-2:])
        assert isinstance(found, AttributionMap) and found.dtype == np.float32
        assert (found.method, found.layer, found.target, found.note) == (method, layer, 3, "")
        close(found, expected)
        assert found.max() > 0


def test_grad_cam_of_gradcam_py_equals_attribute(demo, digit, photo):
    assert np.array_equal(
        grad_cam(demo, digit, "relu_4", 2),
        attribute(demo, digit, "gradcam", layer="relu_4", target=2),
    )
    loaded = open_model("resnet18", weights="random")
    assert np.array_equal(
        grad_cam(loaded, photo, "layer4"), attribute(loaded, photo, "gradcam", layer="layer4")
    )


def test_score_cam_equals_the_loop_over_channels(demo, digit):
    found = attribute(demo, digit, "scorecam", target=4, batch_size=20)
    assert found.layer == "relu_4"
    close(found, reference_score_cam(demo, digit, "features.8", 4))
    faster = attribute(demo, digit, "scorecam", layer="relu_3", target=4, max_channels=16)
    close(faster, reference_score_cam(demo, digit, "features.5", 4, max_channels=16))
    model, x = small_classifier(), torch.rand(1, 3, 12, 12)
    close(attribute(model, x, "scorecam", target=1), reference_score_cam(model, x, "2", 1))


def test_score_cam_skips_all_zero_maps_and_reports_progress(demo, digit):
    maps, _, _ = maps_and_gradient(demo, digit, "features.8")
    live = int((np.abs(maps).reshape(len(maps), -1).max(axis=1) > 0).sum())
    calls = []
    attribute(demo, digit, "scorecam", batch_size=16, progress=lambda *a: calls.append(a))
    assert calls[-1] == (live, live) and len(calls) == -(-live // 16)


def test_eigen_cam_is_the_first_principal_component_with_a_positive_sign(
    demo, digit, resnet, photo
):
    for model, x, layer, path in (
        (demo, digit, "relu_4", "features.8"),
        (resnet, photo, "layer3", "layer3"),
    ):
        maps, _, _ = maps_and_gradient(model, x, path)
        expected = upsample(reference_eigen_cam(maps).astype(np.float32), x.shape[-2:])
        close(attribute(model, x, "eigencam", layer=layer), expected)
        # Class-agnostic: every target gives the same map.
        assert np.array_equal(
            attribute(model, x, "eigencam", layer=layer, target=0),
            attribute(model, x, "eigencam", layer=layer, target=1),
        )


# --- which layer a CAM uses -------------------------------------------------------------


def test_a_conv_taken_before_its_relu_is_replaced_by_the_relu(demo, digit):
    note = "conv_4 is taken before its activation, so its rectified output relu_4 is used."
    assert cam_layer(demo, digit, "conv_4") == ("relu_4", note)
    assert cam_layer(demo, digit) == ("relu_4", "")
    assert cam_layer(demo, digit, "features.8") == ("relu_4", "")
    cam = attribute(demo, digit, "gradcam", layer="conv_4")
    assert (cam.layer, cam.note) == ("relu_4", note)
    assert np.array_equal(cam, attribute(demo, digit, "gradcam", layer="relu_4"))


def test_resnet_layers(resnet, photo):
    assert cam_layer(resnet, photo) == ("layer4", "")
    name, note = cam_layer(resnet, photo, "layer4.1.conv1")
    assert name == "layer4.1.relu" and note.startswith("layer4.1.conv1 is taken before")
    assert attribute(resnet, photo, "hirescam").layer == "layer4"


def test_without_a_rectified_output_the_last_maps_are_used_and_said():
    model, x = EndsInNorm().eval(), torch.rand(1, 1, 8, 8)
    assert cam_layer(model, x) == (
        "norm",
        "Nothing rectified follows the last convolution, so the last feature maps, norm, are used.",
    )


def test_gradcam_on_conv_4_is_blank_for_at_most_2_in_100_digits(demo, digits):
    blank = sum(
        not attribute(demo, digits[i : i + 1], "gradcam", layer="conv_4").any() for i in range(100)
    )
    assert blank <= 2
    # The layer as it is, before its ReLU, is blank far more often.
    assert sum(not grad_cam(demo, digits[i : i + 1], "conv_4").any() for i in range(100)) > 20


# --- input methods --------------------------------------------------------------------------


def test_saliency_equals_autograd(demo, digit, resnet, photo):
    for model, x in ((demo, digit), (resnet, photo)):
        found = attribute(model, x, "saliency")
        expected = saliency_of(plain(model), x, found.target)[0].numpy()
        assert found.layer is None and found.shape == x.shape[-2:]
        close(found, expected)


def test_smoothgrad_is_seeded_and_equals_the_loop_over_noisy_copies(resnet, photo):
    found = attribute(resnet, photo, "smoothgrad", samples=6, seed=3, batch_size=4, target=2)
    again = attribute(resnet, photo, "smoothgrad", samples=6, seed=3, batch_size=4, target=2)
    assert np.array_equal(found, again)
    # The noise does not depend on the batches (their sums may round differently).
    close(found, attribute(resnet, photo, "smoothgrad", samples=6, seed=3, target=2))
    assert not np.allclose(found, attribute(resnet, photo, "smoothgrad", samples=6, target=2))
    generator, sigma = torch.Generator().manual_seed(3), 0.15 * float(photo.max() - photo.min())
    net = plain(resnet)
    expected = np.mean(
        [
            saliency_of(net, photo + sigma * torch.randn(photo.shape[1:], generator=generator), 2)[
                0
            ]
            for _ in range(6)
        ],
        axis=0,
    )
    close(found, expected, rtol=1e-4)


@pytest.mark.parametrize("which", ["demo", "resnet", "resnet with biases"])
def test_integrated_gradients_sum_to_the_change_of_the_logit(which, demo, digit, resnet, photo):
    if which == "demo":
        model, net, x = demo, demo.model, digit
    elif which == "resnet":  # no bias before the head: the logit is linear along the path
        model, net, x = resnet, resnet, photo
    else:  # BatchNorm biases and means, so the path is not a straight line for a ReLU net
        net = model = copy.deepcopy(resnet)
        generator = torch.Generator().manual_seed(0)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.bias.data = torch.rand(module.bias.shape, generator=generator) * 0.6 - 0.3
        x = torch.randn(1, 3, 64, 64, generator=generator)
    found = attribute(model, x, "integrated_gradients")
    with torch.no_grad():
        change = net(x)[0, found.target] - net(torch.zeros_like(x))[0, found.target]
    assert abs(found.sum() - float(change)) <= 0.01 * abs(float(change))
    assert found.min() < 0 < found.max()  # signed


def reference_occlusion(net, x, window, stride, target):
    height, width = x.shape[-2:]
    rows = list(range(0, height - window + 1, stride))
    cols = list(range(0, width - window + 1, stride))
    rows += [height - window] if rows[-1] != height - window else []
    cols += [width - window] if cols[-1] != width - window else []
    total, count = np.zeros((height, width)), np.zeros((height, width))
    with torch.no_grad():
        base = net(x)[0, target].item()
        for row in rows:
            for col in cols:
                covered = x.clone()
                covered[..., row : row + window, col : col + window] = 0
                total[row : row + window, col : col + window] += (
                    base - net(covered)[0, target].item()
                )
                count[row : row + window, col : col + window] += 1
    return total / count


def test_occlusion_equals_the_loop_over_squares(demo, digit):
    found = attribute(demo, digit, "occlusion", target=5, batch_size=7)
    close(found, reference_occlusion(demo.model, digit, 4, 2, 5), rtol=1e-4)
    found = attribute(demo, digit, "occlusion", target=5, window=5, stride=3)
    close(found, reference_occlusion(demo.model, digit, 5, 3, 5), rtol=1e-4)


def test_occlusion_scores_reach_the_edge_and_give_probabilities():
    model, x = small_classifier(), torch.rand(1, 3, 224, 224)
    scores = occlusion_scores(model, x, batch_size=50)
    assert (scores.window, scores.stride) == (32, 16)
    assert scores.tops.max(axis=0).tolist() == [192, 192] and len(scores.tops) == 13 * 13
    with torch.no_grad():
        np.testing.assert_allclose(scores.base, model.eval()(x)[0].numpy(), rtol=1e-5, atol=1e-6)
    probabilities = scores.probabilities()
    assert probabilities.shape == scores.logits.shape and np.allclose(probabilities.sum(axis=1), 1)
    assert scores.nbytes == scores.tops.nbytes + scores.logits.nbytes + scores.base.nbytes
    odd = occlusion_scores(model, torch.rand(1, 3, 10, 13), window=4, stride=4)
    assert sorted(set(odd.tops[:, 0])) == [0, 4, 6] and sorted(set(odd.tops[:, 1])) == [0, 4, 8, 9]


# --- the caller's model, threads, the map ---------------------------------------------------


def test_the_callers_model_is_left_alone():
    model, x = small_classifier().train(), torch.rand(1, 3, 12, 12)
    before = copy.deepcopy(model.state_dict())
    for method in METHODS:
        attribute(model, x, method, **({"samples": 2} if method == "smoothgrad" else {}))
    assert model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
        assert not module._forward_pre_hooks and "forward" not in vars(module)
    assert all(param.grad is None for param in model.parameters())


def test_many_threads_give_the_maps_of_one(demo, digits):
    jobs = [
        (method, i) for i in range(4) for method in ("gradcam", "scorecam", "saliency", "occlusion")
    ]

    def run(job):
        method, i = job
        return attribute(demo, digits[i : i + 1], method)

    serial = [run(job) for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, jobs))
    for one, other in zip(serial, together, strict=True):
        np.testing.assert_allclose(one, other, rtol=1e-6, atol=1e-7)


def test_callers_inside_inference_mode_or_no_grad_get_the_same_maps(demo, digit):
    for method in METHODS:
        options = {"samples": 3} if method == "smoothgrad" else {}
        expected = attribute(demo, digit, method, **options)
        with torch.inference_mode():
            inside = attribute(demo, digit.clone(), method, **options)
        with torch.no_grad():
            assert np.array_equal(attribute(demo, digit, method, **options), expected)
        assert np.array_equal(inside, expected), method


def test_a_map_keeps_its_facts_through_slicing_and_pickle(demo, digit):
    cam = attribute(demo, digit, "gradcam", layer="conv_4")
    again = pickle.loads(pickle.dumps(cam))
    assert np.array_equal(again, cam)
    assert (again.method, again.layer, again.target, again.note) == (
        cam.method,
        cam.layer,
        cam.target,
        cam.note,
    )
    assert cam[2:5].layer == "relu_4"


# --- errors -------------------------------------------------------------------------------


def test_unknown_method_lists_every_method(demo, digit):
    with pytest.raises(ValueError, match="Unknown attribution method 'grad-cam'") as raised:
        attribute(demo, digit, "grad-cam")
    assert all(method in str(raised.value) for method in METHODS)


def test_bad_inputs_layers_and_options(demo, digit, resnet, photo):
    with pytest.raises(ValueError, match="explains one image"):
        attribute(demo, torch.cat([digit, digit]), "gradcam")
    with pytest.raises(ValueError, match="fc has no feature maps.*choose a convolutional layer"):
        attribute(resnet, photo, "gradcam", layer="fc")
    for method in INPUT_METHODS:
        with pytest.raises(ValueError, match="leave layer=None"):
            attribute(demo, digit, method, layer="relu_4")
    with pytest.raises(ValueError, match="Saliency has no option steps: it takes no options"):
        attribute(demo, digit, "saliency", steps=10)
    with pytest.raises(ValueError, match="Unknown layer 'conv_9'"):
        attribute(demo, digit, "gradcam", layer="conv_9")
    with pytest.raises(TypeError, match="samples must be a whole number"):
        attribute(demo, digit, "smoothgrad", samples=2.5)


def test_a_model_without_class_scores_is_refused(tiny_cnn):
    x = torch.rand(1, 1, 8, 8)
    for method in ("gradcam", "scorecam", "saliency", "occlusion"):
        with pytest.raises(ValueError, match=r"needs class scores \(N×K\), but this model outputs"):
            attribute(tiny_cnn, x, method)


def test_targets_out_of_range_or_not_whole(demo, digit):
    for method in ("gradcam", "eigencam", "integrated_gradients", "occlusion"):
        with pytest.raises(ValueError, match="target must be between 0 and 9"):
            attribute(demo, digit, method, target=10)
    with pytest.raises(TypeError, match="target must be a whole number"):
        attribute(demo, digit, "saliency", target=1.0)


@pytest.mark.parametrize("method", ["scorecam", "smoothgrad", "integrated_gradients", "occlusion"])
def test_should_stop_cancels_between_batches(method, demo, digit):
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(Cancelled, match="stopped after"):
        attribute(demo, digit, method, batch_size=4, should_stop=should_stop)
    with pytest.raises(Cancelled):
        attribute(demo, digit, "gradcam", should_stop=lambda: True)
