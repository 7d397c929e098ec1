"""Faithfulness curves against values known by hand and references written here from the
papers' definitions (RISE's deletion and insertion, ROAD's noisy linear imputation), and
against Quantus 0.6 when it is installed beside the project (never in CI)."""

from __future__ import annotations

import copy
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnnlens.attribution import attribute
from cnnlens.faithfulness_metrics import (
    BLUR_SIGMA,
    FaithfulnessResult,
    FaithfulnessSpec,
    blurred,
    faithfulness,
    impute,
    most_faithful,
)
from cnnlens.gradcam import grad_cam
from cnnlens.models import demo_dataset
from cnnlens.results import Cancelled
from cnnlens.store import ResultStore

QUANTUS = Path(os.environ.get("QUANTUS_REF", "/tmp/quantus_ref"))


@pytest.fixture(scope="module")
def digits(demo) -> torch.Tensor:
    dataset = demo_dataset()
    names = dataset.rows("train")["filename"].tolist()[:8]
    return demo.batch([dataset.load_image(name) for name in names])


def linear_model(weights: list[float], side: int) -> nn.Module:
    """Two classes: class 0's logit is ``weights · pixels``, class 1's is always 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(side * side, 2, bias=False))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0] = torch.tensor(weights)
    return model.eval()


def sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))


# --- values known by hand --------------------------------------------------------------------


def test_deletion_of_a_linear_model_drops_the_logit_by_each_removed_pixel():
    weights = [3.0, -1.0, 2.0, 0.5]
    model = linear_model(weights, 2)
    x = torch.ones(1, 1, 2, 2)
    attribution = np.array(weights).reshape(2, 2)  # weight × pixel: the exact contributions
    curve = faithfulness(model, x, attribution, "deletion", steps=4)
    # Removed in the order 3, 2, 0.5, -1: the logit goes 4.5, 1.5, -0.5, -1, 0.
    expected = [sigmoid(v) for v in (4.5, 1.5, -0.5, -1.0, 0.0)]
    np.testing.assert_allclose(curve.scores, expected, rtol=1e-6)
    np.testing.assert_allclose(curve.fractions, [0, 0.25, 0.5, 0.75, 1])
    assert curve.target == 0 and curve.metric == "deletion"
    # At the end both logits are 0: a tie, which argmax gives to class 0.
    np.testing.assert_array_equal(curve.still_predicted, [True, True, False, False, True])
    trapezoid = sum((expected[i] + expected[i + 1]) / 2 * 0.25 for i in range(4))
    assert curve.area == pytest.approx(trapezoid, rel=1e-6)


def test_ties_are_removed_in_raster_order_and_every_channel_of_a_pixel_at_once():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4, 2, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0] = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0])
    x = torch.ones(1, 2, 1, 4)  # channel 0: weights 1, 2, 4, 8; channel 1: 16 ... 128
    curve = faithfulness(model, x, np.zeros((1, 4)), "deletion", steps=4, target=0)
    # All tied: pixel 0 (1 + 16), then pixel 1 (2 + 32), pixel 2, pixel 3.
    logits = [255.0, 238.0, 204.0, 136.0, 0.0]
    expected = [sigmoid(v) for v in logits]
    np.testing.assert_allclose(curve.scores, expected, rtol=1e-6)


def test_insertion_starts_from_the_blurred_image_and_inserts_the_top_pixels_first():
    rng = np.random.default_rng(1)
    side = 6
    weights = rng.normal(size=side * side)
    model = linear_model(list(weights), side)
    x = torch.from_numpy(rng.random((1, 1, side, side))).float()
    attribution = rng.random((side, side))
    curve = faithfulness(model, x, attribution, "insertion", steps=9)
    start = reference_blur(x[0, 0].numpy())
    order = np.argsort(-attribution.ravel())
    expected = []
    for i in range(10):
        image = start.ravel().copy()
        inserted = order[: i * side * side // 9]
        image[inserted] = x.numpy().ravel()[inserted]
        expected.append(sigmoid(float(weights @ image)))
    np.testing.assert_allclose(curve.scores, expected, rtol=1e-5)


def reference_blur(image: np.ndarray) -> np.ndarray:
    """RISE's blur written out: an 11×11 Gaussian of σ 5, normalised, zero outside the image."""
    t = np.arange(11) - 5
    kernel = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * BLUR_SIGMA**2))
    kernel /= kernel.sum()
    height, width = image.shape
    out = np.zeros_like(image, dtype=np.float64)
    for y in range(height):
        for x in range(width):
            for dy in range(-5, 6):
                for dx in range(-5, 6):
                    if 0 <= y + dy < height and 0 <= x + dx < width:
                        out[y, x] += kernel[dy + 5, dx + 5] * image[y + dy, x + dx]
    return out


def test_blur_equals_the_written_out_kernel():
    image = torch.from_numpy(np.random.default_rng(2).random((1, 1, 9, 13))).float()
    np.testing.assert_allclose(
        blurred(image)[0, 0].numpy(), reference_blur(image[0, 0].numpy()), atol=1e-6
    )


# --- ROAD's imputation -----------------------------------------------------------------------

NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def weight(dy: int, dx: int) -> float:
    return 1 / 12 if dy and dx else 1 / 6


def test_a_linear_ramp_is_imputed_exactly_inside_the_image():
    rows, cols = np.mgrid[0:8, 0:9]
    ramp = np.stack([2.0 * rows + 3.0 * cols + 1.0, -rows + 0.5 * cols])
    removed = np.zeros((8, 9), bool)
    removed[2:5, 3:7] = True
    removed[6, 1] = True
    np.testing.assert_allclose(impute(ramp, removed), ramp, atol=1e-12)


def test_each_imputed_pixel_is_the_weighted_mean_of_its_neighbours():
    rng = np.random.default_rng(3)
    image = rng.random((2, 7, 8))
    removed = rng.random((7, 8)) < 0.4
    removed[0, 0] = removed[6, 7] = True  # corners: fewer neighbours
    filled = impute(image, removed)
    np.testing.assert_array_equal(filled[:, ~removed], image[:, ~removed])
    for y, x in zip(*np.nonzero(removed), strict=True):
        total, mean = 0.0, np.zeros(2)
        for dy, dx in NEIGHBOURS:
            if 0 <= y + dy < 7 and 0 <= x + dx < 8:
                total += weight(dy, dx)
                mean += weight(dy, dx) * filled[:, y + dy, x + dx]
        np.testing.assert_allclose(filled[:, y, x], mean / total, atol=1e-12)


def reference_impute(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The same system built pixel by pixel and solved densely."""
    channels, height, width = image.shape
    unknown = [(y, x) for y in range(height) for x in range(width) if removed[y, x]]
    if len(unknown) == height * width:
        return np.zeros_like(image)
    number = {pixel: i for i, pixel in enumerate(unknown)}
    system = np.zeros((len(unknown), len(unknown)))
    right = np.zeros((len(unknown), channels))
    for i, (y, x) in enumerate(unknown):
        for dy, dx in NEIGHBOURS:
            if 0 <= y + dy < height and 0 <= x + dx < width:
                system[i, i] += weight(dy, dx)
                if removed[y + dy, x + dx]:
                    system[i, number[(y + dy, x + dx)]] -= weight(dy, dx)
                else:
                    right[i] += weight(dy, dx) * image[:, y + dy, x + dx]
    filled = image.copy()
    if unknown:
        solution = np.linalg.solve(system, right)
        for i, (y, x) in enumerate(unknown):
            filled[:, y, x] = solution[i]
    return filled


def reference_curve(model: nn.Module, x: torch.Tensor, images: list[np.ndarray], target: int):
    """Each image through a plain copy of the model, one at a time: the target's probability."""
    plain = copy.deepcopy(model).eval()
    scores = []
    with torch.no_grad():
        for image in images:
            batch = torch.from_numpy(np.asarray(image, np.float32)).reshape(x.shape)
            scores.append(float(torch.softmax(plain(batch), dim=1)[0, target]))
    return np.array(scores)


def reference_images(x: torch.Tensor, attribution: np.ndarray, metric: str, steps: int):
    """The perturbed images of a curve from the papers' definitions, one loop per point."""
    image = x[0].double().numpy()
    order = np.argsort(-attribution.ravel(), kind="stable")
    pixels = attribution.size
    start = np.stack([reference_blur(channel) for channel in image])
    images = []
    for i in range(steps + 1):
        chosen = np.zeros(pixels, bool)
        chosen[order[: i * pixels // steps]] = True
        chosen = chosen.reshape(attribution.shape)
        if metric == "deletion":
            images.append(np.where(chosen, 0.0, image))
        elif metric == "insertion":
            images.append(np.where(chosen, image, start))
        else:
            images.append(reference_impute(image, chosen))
    return images


@pytest.mark.parametrize("metric", ["deletion", "insertion", "road"])
def test_demo_curves_equal_a_loop_over_the_papers_definitions(demo, digits, metric):
    x = digits[1:2]
    attribution = grad_cam(demo, x, "relu_4")
    curve = faithfulness(demo, x, attribution, metric, steps=10, noise=0.0)
    target = int(demo.model(x).argmax())
    images = reference_images(x, attribution.astype(np.float64), metric, 10)
    expected = reference_curve(demo.model, x, images, target)
    assert curve.target == target
    np.testing.assert_allclose(curve.scores, expected, atol=2e-5)
    trapezoid = sum((expected[i] + expected[i + 1]) / 2 * 0.1 for i in range(10))
    assert curve.area == pytest.approx(trapezoid, abs=2e-5)


def test_road_noise_is_seeded():
    rng = np.random.default_rng(4)
    model = linear_model(list(rng.normal(size=25)), 5)
    x = torch.from_numpy(rng.random((1, 1, 5, 5))).float()
    attribution = rng.random((5, 5))

    def road(**options):
        return faithfulness(model, x, attribution, "road", steps=5, **options).scores

    np.testing.assert_array_equal(road(seed=1), road(seed=1))
    assert not np.array_equal(road(seed=1), road(seed=2))
    quiet, noisy = road(noise=0.0), road(seed=1)
    assert quiet[0] == noisy[0]  # nothing imputed yet: no noise
    assert 0 < np.abs(quiet - noisy).max() < 0.05


# --- the model and the checks ----------------------------------------------------------------

FORWARDS: list[int] = []


class Counted(nn.Module):
    """A linear classifier that notes each forward's batch size (in a list its copies share)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        FORWARDS.append(len(x))
        return self.head(x)


def test_one_curve_is_one_forward_on_a_copy_and_the_callers_model_is_untouched():
    torch.manual_seed(0)
    model = Counted().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FORWARDS.clear()
    faithfulness(model, torch.rand(1, 1, 4, 4), np.random.default_rng(0).random((4, 4)), "road")
    assert FORWARDS == [21]
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_errors_say_what_to_do(demo, digits):
    x = digits[:1]
    good = np.ones((28, 28))
    with pytest.raises(ValueError, match="deletion, insertion, road"):
        faithfulness(demo, x, good, "pixel_flipping")
    with pytest.raises(ValueError, match=r"shape \(14, 14\).*28×28"):
        faithfulness(demo, x, np.ones((14, 14)), "deletion")
    with pytest.raises(ValueError, match="one image"):
        faithfulness(demo, digits[:2], good, "deletion")
    with pytest.raises(TypeError, match="numpy array"):
        faithfulness(demo, x.numpy(), good, "deletion")
    with pytest.raises(ValueError, match="between 0 and 9; got 10"):
        faithfulness(demo, x, good, "deletion", target=10)
    with pytest.raises(TypeError, match="whole number"):
        faithfulness(demo, x, good, "deletion", target=1.5)
    with pytest.raises(ValueError, match="NaN"):
        faithfulness(demo, x, np.full((28, 28), np.nan), "deletion")
    with pytest.raises(ValueError, match="steps"):
        faithfulness(demo, x, good, "deletion", steps=0)
    with pytest.raises(ValueError, match="class scores"):
        faithfulness(nn.Sequential(nn.Conv2d(1, 2, 3)), x, good, "deletion")


# --- over a dataset --------------------------------------------------------------------------


def test_the_spec_equals_one_call_per_image_and_is_kept(demo, tmp_path):
    dataset = demo_dataset()
    store = ResultStore(tmp_path / "store")
    spec = FaithfulnessSpec(demo, dataset, "gradcam", images=5, steps=10, batch_size=44)
    seen: list[tuple[int, int]] = []
    result = store.run(spec, on_progress=lambda *p: seen.append(p))
    assert seen == [(2, 5), (4, 5), (5, 5)]  # two images per forward of 2 × 2 × 11
    rows = dataset.rows("train")
    picked = sorted(rows["filename"].tolist().index(n) for n in dataset.pick_many(128, 5))
    np.testing.assert_array_equal(result.indices, picked)
    assert result.labels == [rows["label"].iloc[i] for i in picked]
    assert result.layer == "relu_4" and result.method == "gradcam" and len(result) == 5
    for i, row in enumerate(result.indices):
        x = demo.batch(dataset.load_image(rows["filename"].iloc[row]))
        found = attribute(demo, x, "gradcam")
        assert result.predicted[i] == found.target
        for metric in ("deletion", "insertion"):
            area = faithfulness(demo, x, found, metric, steps=10).area
            assert getattr(result, metric)[i] == pytest.approx(area, abs=1e-5)
    again = ResultStore(store.folder).peek(spec)
    np.testing.assert_array_equal(again.deletion, result.deletion)
    assert again.labels == result.labels and again.classes == demo.classes


def test_a_cancelled_spec_keeps_nothing(demo, tmp_path):
    store = ResultStore(tmp_path / "store")
    spec = FaithfulnessSpec(demo, demo_dataset(), "saliency", images=6, steps=4, batch_size=10)
    seen: list[tuple[int, int]] = []
    with pytest.raises(Cancelled, match="nothing"):
        store.run(spec, on_progress=lambda *p: seen.append(p), should_stop=lambda: bool(seen))
    assert seen == [(1, 6)]
    assert store.peek(spec) is None
    assert not list(store.folder.glob("*.npz"))


def test_the_spec_key_holds_method_layer_images_and_steps(demo):
    dataset = demo_dataset()
    base = FaithfulnessSpec(demo, dataset, "gradcam", layer="relu_4")
    assert base.key == FaithfulnessSpec(demo, dataset, "gradcam", layer="features.8").key
    assert base.key == FaithfulnessSpec(demo, dataset, "gradcam", "relu_4", batch_size=8).key
    others = [
        FaithfulnessSpec(demo, dataset, "gradcam"),
        FaithfulnessSpec(demo, dataset, "saliency"),
        FaithfulnessSpec(demo, dataset, "gradcam", layer="relu_4", images=10),
        FaithfulnessSpec(demo, dataset, "gradcam", layer="relu_4", steps=10),
    ]
    assert len({base.key, *(spec.key for spec in others)}) == 5
    with pytest.raises(ValueError, match="gradcam, gradcam\\+\\+"):
        _ = FaithfulnessSpec(demo, dataset, "lime").key


def made(method: str, deletion: list[float], insertion: list[float]) -> FaithfulnessResult:
    count = len(deletion)
    return FaithfulnessResult(
        method=method,
        layer=None,
        steps=20,
        classes=("a", "b", "c"),
        indices=np.arange(count),
        labels=["b", "a", "b", "a"][:count],
        predicted=np.array([1, 0, 1, 1][:count]),
        deletion=np.array(deletion, np.float32),
        insertion=np.array(insertion, np.float32),
    )


def test_areas_by_class_and_overall():
    result = made("gradcam", [0.1, 0.2, 0.3, 0.5], [0.9, 0.8, 0.7, 0.4])
    table = result.by_class()
    assert table["class"].tolist() == ["a", "b"]
    assert table["images"].tolist() == [1, 3]
    np.testing.assert_allclose(table["deletion"], [0.2, 0.3])
    np.testing.assert_allclose(table["insertion"], [0.8, (0.9 + 0.7 + 0.4) / 3])
    by_label = result.by_class("label")
    assert by_label["images"].tolist() == [2, 2]
    np.testing.assert_allclose(by_label["deletion"], [0.35, 0.2])
    assert result.mean_deletion == pytest.approx(0.275)
    assert result.mean_insertion == pytest.approx(0.7)
    with pytest.raises(ValueError, match="'predicted' or 'label'"):
        result.by_class("truth")


def test_most_faithful_in_words():
    grad = made("gradcam", [0.1, 0.14], [0.8, 0.8])
    saliency = made("saliency", [0.3, 0.32], [0.5, 0.6])
    assert most_faithful({"gradcam": grad, "saliency": saliency}) == (
        "When the pixels Grad-CAM marks are removed first, the network loses its answer "
        "fastest: deletion area 0.12, against 0.31 for Saliency. Inserted first, they bring "
        "it back fastest too: insertion area 0.80, against 0.55 for Saliency."
    )
    occlusion = made("occlusion", [0.2, 0.2], [0.9, 0.95])
    text = most_faithful({"gradcam": grad, "saliency": saliency, "occlusion": occlusion})
    assert "deletion area 0.12, against 0.20 for Occlusion and 0.31 for Saliency" in text
    assert "the pixels Occlusion marks brings the answer back fastest: insertion area 0.92" in text
    assert text.endswith("The two measures disagree.")
    assert most_faithful({"gradcam": grad}).startswith("Only Grad-CAM was measured")
    with pytest.raises(ValueError, match="at least one method"):
        most_faithful({})


# --- Quantus 0.6, when installed beside the project -------------------------------------------


@pytest.fixture
def quantus():
    """Quantus from $QUANTUS_REF (default /tmp/quantus_ref), on sys.path for this test only."""
    if not QUANTUS.is_dir():
        pytest.skip(f"Quantus is not installed at {QUANTUS} (pip install --target ...).")
    sys.path.insert(0, str(QUANTUS))
    try:
        module = pytest.importorskip("quantus")
        yield module
    finally:
        sys.path.remove(str(QUANTUS))


def test_road_and_pixel_flipping_equal_quantus(quantus, demo, digits):
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(5)
    image, removed = rng.random((3, 9, 11)), rng.choice(99, 40, replace=False)
    mask = np.zeros(99, bool)
    mask[removed] = True
    expected = noisy_linear_imputation(image, removed, noise=0.0)
    np.testing.assert_allclose(impute(image, mask.reshape(9, 11)), expected, atol=1e-12)

    # Grad-CAM maps with ties broken, since Quantus sorts with an unstable quicksort.
    maps = np.stack(
        [
            grad_cam(demo, digits[i : i + 1], "relu_4") + 1e-4 * rng.random((28, 28))
            for i in range(6)
        ]
    ).astype(np.float32)
    plain = copy.deepcopy(demo.model).to(memory_format=torch.contiguous_format)
    x = digits[:6]
    with torch.no_grad():
        answers = plain(x).argmax(1).numpy()
    steps = 7  # 112 pixels a step
    curves = {
        metric: [
            faithfulness(demo, x[i : i + 1], maps[i], metric, steps=steps, noise=0.0)
            for i in range(6)
        ]
        for metric in ("road", "deletion")
    }
    common = dict(normalise=False, abs=False, disable_warnings=True)
    inputs = dict(model=plain, x_batch=x.numpy(), y_batch=answers, a_batch=maps[:, None])
    percentages = [100 * i / steps for i in range(1, steps)]
    road = quantus.ROAD(noise=0.0, percentages=percentages, **common)(**inputs, device="cpu")
    accuracy = np.mean([curve.still_predicted for curve in curves["road"]], axis=0)
    np.testing.assert_allclose(list(road.values()), accuracy[1:-1])
    flips = quantus.PixelFlipping(features_in_step=784 // steps, perturb_baseline=0.0, **common)
    flipped = np.array(flips(**inputs, device="cpu"))
    ours = np.stack([curve.scores[1:] for curve in curves["deletion"]])
    np.testing.assert_allclose(flipped, ours, atol=1e-6)
