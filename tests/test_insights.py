"""Dataset-wide insights against references computed here with plain torch and numpy."""

from __future__ import annotations

import copy
import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from torch import nn

from cnnlens import embeddings as embedding_module
from cnnlens.data import load_dataset
from cnnlens.embeddings import embedding
from cnnlens.gradcam import grad_cam
from cnnlens.insights import (
    LayerStats,
    Predictions,
    class_channel_matrix,
    difference,
    fire_box,
    layer_stats,
    layer_stats_and_predictions,
    predict_split,
    top_images,
)
from cnnlens.layers import layer_names
from cnnlens.models import LoadedModel, demo_model, open_model
from cnnlens.preprocess import to_batch, to_uint8_image
from cnnlens.registry import InputSpec
from cnnlens.results import Cancelled, from_arrays, to_arrays
from tests.generated import write_dataset

LABELS = [i % 4 for i in range(14)]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("insights") / "digits", LABELS, size=28, seed=3)


@pytest.fixture(scope="module")
def reference(digits) -> dict[str, np.ndarray]:
    """conv_3's maps and the logits of every image, from the demo model itself."""
    dataset = load_dataset(digits)
    model = demo_model()
    images = [dataset.load_image(name) for name in dataset.index["filename"]]
    index = layer_names(model).index("conv_3")
    with torch.no_grad():
        batch = to_batch(images)
        maps = model.features[: index + 1](batch).numpy()
        logits = model(batch).numpy()
    return {"maps": maps, "logits": logits}


@pytest.fixture(scope="module")
def stats(demo, digits) -> LayerStats:
    return layer_stats(demo, load_dataset(digits), "conv_3", batch_size=4)


@pytest.fixture(scope="module")
def predictions(demo, digits) -> Predictions:
    return predict_split(demo, load_dataset(digits), batch_size=4)


def test_layer_stats_reduce_every_images_maps(stats, reference, digits):
    maps = reference["maps"]
    flat = maps.reshape(*maps.shape[:2], -1)
    assert stats.layer == "conv_3"
    assert stats.map_shape == maps.shape[1:] == (64, 14, 14)
    assert stats.filenames == load_dataset(digits).index["filename"].tolist()
    assert stats.labels == LABELS
    np.testing.assert_allclose(stats.mean, flat.mean(axis=2), atol=1e-5)
    np.testing.assert_allclose(stats.max, flat.max(axis=2), atol=1e-5)
    # The reported peak holds the map's maximum.
    images, channels = np.indices(stats.peak_y.shape)
    at_peak = maps[images, channels, stats.peak_y, stats.peak_x]
    np.testing.assert_allclose(at_peak, flat.max(axis=2), atol=1e-5)


def test_predictions_are_the_models_classes_and_mark_the_mistakes(predictions, stats, reference):
    predicted = reference["logits"].argmax(axis=1)
    assert predictions.filenames == stats.filenames
    assert predictions.labels == LABELS
    np.testing.assert_array_equal(predictions.predicted, predicted)
    assert predictions.classes == tuple(str(d) for d in range(10))
    assert predictions.names == [str(p) for p in predicted]
    np.testing.assert_array_equal(predictions.misclassified, predicted != np.array(LABELS))
    unknown = dataclasses.replace(predictions, labels=["cat"] * len(LABELS))
    assert unknown.misclassified is None
    partly = dataclasses.replace(predictions, labels=[None, *LABELS[1:]])
    assert not partly.misclassified[0]


def test_one_pass_gives_a_layers_statistics_and_the_predictions(
    demo, digits, stats, predictions, monkeypatch
):
    from cnnlens import pipeline

    passes = []
    real = pipeline.iter_features

    def iter_features(*args, **options):
        passes.append(options.get("with_predictions", False))
        return real(*args, **options)

    monkeypatch.setattr(pipeline, "iter_features", iter_features)
    both, answers = layer_stats_and_predictions(demo, load_dataset(digits), "conv_3", batch_size=5)
    assert passes == [True]
    assert both.filenames == answers.filenames == stats.filenames
    assert both.labels == answers.labels == LABELS
    assert (both.layer, both.map_shape) == (stats.layer, stats.map_shape)
    for name in ("mean", "max", "peak_y", "peak_x"):
        np.testing.assert_array_equal(getattr(both, name), getattr(stats, name))
    np.testing.assert_array_equal(answers.predicted, predictions.predicted)
    assert answers.classes == predictions.classes
    features_only = dataclasses.replace(demo, classes=None)
    with pytest.raises(ValueError, match="no classes"):
        layer_stats_and_predictions(features_only, load_dataset(digits), "conv_3")


def test_a_model_without_classes_predicts_nothing(demo, digits):
    features_only = dataclasses.replace(demo, classes=None)
    with pytest.raises(ValueError, match="no classes"):
        predict_split(features_only, load_dataset(digits))


def test_results_survive_a_round_trip_through_plain_arrays(stats, predictions):
    arrays = to_arrays(stats)
    assert all(array.dtype != object for array in arrays.values())
    back = from_arrays(LayerStats, arrays)
    assert (back.layer, back.map_shape, back.filenames, back.labels) == (
        stats.layer,
        stats.map_shape,
        stats.filenames,
        stats.labels,
    )
    for name in ("mean", "max", "peak_y", "peak_x"):
        np.testing.assert_array_equal(getattr(back, name), getattr(stats, name))
    with pytest.raises(ValueError, match="do not fit together"):
        from_arrays(LayerStats, {**arrays, "mean": arrays["mean"][:3]})
    arrays = to_arrays(predictions)
    assert all(array.dtype != object for array in arrays.values())
    back = from_arrays(Predictions, arrays)
    assert (back.filenames, back.labels, back.classes) == (
        predictions.filenames,
        predictions.labels,
        predictions.classes,
    )
    np.testing.assert_array_equal(back.predicted, predictions.predicted)
    with pytest.raises(ValueError, match="do not fit together"):
        from_arrays(Predictions, {**arrays, "predicted": arrays["predicted"] + 10})


def test_a_pass_stops_between_batches_when_asked(demo, digits):
    asked, progress = [], []

    def should_stop() -> bool:
        asked.append(1)
        return len(progress) >= 2

    with pytest.raises(Cancelled, match="Stopped after"):
        layer_stats(
            demo,
            load_dataset(digits),
            "conv_1",
            batch_size=2,
            should_stop=should_stop,
            on_progress=lambda done, total: progress.append((done, total)),
        )
    # The pass ends within a batch of being asked, long before its 7 batches.
    assert progress[:2] == [(2, 14), (4, 14)] and len(progress) <= 3


def test_an_unknown_layer_or_split_is_refused(demo, digits):
    dataset = load_dataset(digits)
    with pytest.raises(ValueError, match="conv_9"):
        layer_stats(demo, dataset, "conv_9")
    with pytest.raises(ValueError, match="no test CSV"):
        layer_stats(demo, dataset, "conv_1", split="test")


@pytest.mark.parametrize("by", ["max", "mean"])
def test_top_images_are_the_highest_scoring_images_of_the_channel(stats, reference, by):
    maps = reference["maps"]
    flat = maps.reshape(*maps.shape[:2], -1)
    scores = flat.max(axis=2) if by == "max" else flat.mean(axis=2)
    channel = 7
    top = top_images(stats, channel, k=5, by=by)
    expected = np.argsort(scores[:, channel])[::-1][:5]
    assert list(top.columns) == ["filename", "label", "score", "y", "x"]
    assert top["filename"].tolist() == [stats.filenames[i] for i in expected]
    assert top["label"].tolist() == [LABELS[i] for i in expected]
    np.testing.assert_allclose(top["score"], scores[expected, channel], atol=1e-5)
    for (_, row), image in zip(top.iterrows(), expected, strict=True):
        assert maps[image, channel, row["y"], row["x"]] == pytest.approx(
            flat[image, channel].max(), abs=1e-5
        )
    assert len(top_images(stats, channel, k=100)) == len(LABELS)
    threes = np.array(LABELS) == 3
    among = top_images(stats, channel, k=2, by=by, among=threes)
    expected = [i for i in np.argsort(scores[:, channel])[::-1] if LABELS[i] == 3][:2]
    assert among["filename"].tolist() == [stats.filenames[i] for i in expected]


def test_top_images_check_their_arguments(stats):
    with pytest.raises(ValueError, match="channels 0 to 63; got 64"):
        top_images(stats, 64)
    with pytest.raises(TypeError, match="channel must be an integer"):
        top_images(stats, 1.5)
    with pytest.raises(ValueError, match="by must be 'mean' or 'max'"):
        top_images(stats, 0, by="median")
    with pytest.raises(ValueError, match="k must be at least 1"):
        top_images(stats, 0, k=0)
    with pytest.raises(ValueError, match="among must mark each of the 14 images"):
        top_images(stats, 0, among=np.ones(3, dtype=bool))


def test_the_class_channel_matrix_averages_each_class(stats, predictions, reference):
    means = reference["maps"].mean(axis=(2, 3))
    matrix = class_channel_matrix(stats)
    assert matrix.index.tolist() == [0, 1, 2, 3]
    assert matrix.columns.tolist() == list(range(64))
    for label in range(4):
        rows = np.array(LABELS) == label
        np.testing.assert_allclose(matrix.loc[label], means[rows].mean(axis=0), atol=1e-5)
    by_prediction = class_channel_matrix(stats, by="max", predictions=predictions)
    maxima = reference["maps"].max(axis=(2, 3))
    predicted = reference["logits"].argmax(axis=1)
    assert by_prediction.index.tolist() == sorted({str(p) for p in predicted})
    for name in by_prediction.index:
        rows = predicted == int(name)
        np.testing.assert_allclose(by_prediction.loc[name], maxima[rows].mean(axis=0), atol=1e-5)


def test_the_relative_matrix_scores_each_channel_across_the_classes(stats):
    means = class_channel_matrix(stats).to_numpy()
    relative = class_channel_matrix(stats, relative=True)
    expected = (means - means.mean(axis=0)) / means.std(axis=0)
    np.testing.assert_allclose(relative.to_numpy(), expected, atol=1e-9)
    flat = dataclasses.replace(stats, mean=np.ones_like(stats.mean))
    np.testing.assert_array_equal(class_channel_matrix(flat, relative=True).to_numpy(), 0.0)


def test_the_matrix_needs_labels_or_predictions_for_the_same_images(stats, predictions):
    unlabelled = dataclasses.replace(stats, labels=[None] * len(stats))
    with pytest.raises(ValueError, match="no labels; group them by the predicted class"):
        class_channel_matrix(unlabelled)
    assert class_channel_matrix(unlabelled, predictions=predictions).index.name == "predicted"
    other = dataclasses.replace(predictions, filenames=predictions.filenames[::-1])
    with pytest.raises(ValueError, match="other images"):
        class_channel_matrix(stats, predictions=other)
    with pytest.raises(ValueError, match="by must be 'mean' or 'max'"):
        class_channel_matrix(stats, by="sum")


def test_pca_equals_scikit_learns_up_to_the_sign_of_each_axis(stats):
    points = embedding(stats)
    expected = PCA(n_components=2).fit_transform(stats.mean.astype(np.float64))
    assert points.shape == (len(stats), 2) and points.dtype == np.float32
    for axis in range(2):
        sign = np.sign(points[:, axis] @ expected[:, axis])
        np.testing.assert_allclose(points[:, axis], sign * expected[:, axis], atol=1e-4)
    # The sign is fixed by the data, not by chance: a permuted copy gives the same axes.
    order = np.random.default_rng(0).permutation(len(stats))
    np.testing.assert_allclose(embedding(stats.mean[order]), points[order], atol=1e-4)


def test_pca_of_one_feature_puts_the_points_on_a_line():
    points = embedding(np.array([[1.0], [3.0], [2.0]]))
    np.testing.assert_allclose(points, [[-1, 0], [1, 0], [0, 0]], atol=1e-6)


def test_tsne_is_reproducible_with_its_seed(stats):
    first = embedding(stats, method="tsne", seed=1)
    assert first.shape == (len(stats), 2) and first.dtype == np.float32
    np.testing.assert_array_equal(first, embedding(stats, method="tsne", seed=1))


def test_tsne_keeps_well_separated_clusters_apart():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 20, (4, 16))
    cluster = np.repeat(np.arange(4), 60)
    points = embedding(centres[cluster] + rng.normal(0, 1, (240, 16)), method="tsne", seed=0)
    distances = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    # Each image's nearest neighbours on the map are of its own cluster...
    nearest = np.argsort(distances, axis=1)[:, :10]
    assert (cluster[nearest] == cluster[:, None]).all()
    # ...and every cluster lies wholly apart from the others.
    for c in range(4):
        own = cluster == c
        widest = distances[own][:, own][np.isfinite(distances[own][:, own])].max()
        assert distances[own][:, ~own].min() > widest / 4


def test_tsne_reports_its_steps_and_can_be_cancelled(stats):
    from cnnlens.embeddings import TSNE_ITERATIONS, TSNE_NEIGHBOUR_STEPS, TSNE_STEPS

    steps = []
    embedding(stats, method="tsne", on_progress=lambda done, total: steps.append((done, total)))
    assert steps[0] == (0, TSNE_STEPS) and steps[-1] == (TSNE_STEPS, TSNE_STEPS)
    assert (TSNE_NEIGHBOUR_STEPS, TSNE_STEPS) in steps  # the neighbour search is reported
    assert [done for done, _ in steps] == sorted(done for done, _ in steps)
    asked = []

    def stop() -> bool:
        asked.append(True)
        return len(asked) > 2  # one block of neighbours, then at the first iteration report

    with pytest.raises(Cancelled, match=f"after 10 of {TSNE_ITERATIONS} iterations"):
        embedding(stats, method="tsne", should_stop=stop)
    assert len(asked) == 3
    with pytest.raises(Cancelled, match="while finding neighbours"):
        embedding(stats, method="tsne", should_stop=lambda: True)


def test_tsne_cancels_inside_a_large_neighbour_search():
    features = np.random.default_rng(0).normal(size=(3 * embedding_module._NEIGHBOUR_ROWS, 8))
    steps, asked = [], []

    def stop() -> bool:
        asked.append(True)
        return len(asked) > 2  # after two of the three blocks

    with pytest.raises(Cancelled, match=f"finding neighbours \\(4,096 of {len(features):,}\\)"):
        embedding(features, "tsne", on_progress=lambda d, t: steps.append(d), should_stop=stop)
    third = embedding_module.TSNE_NEIGHBOUR_STEPS // 3
    assert steps == [0, third, 2 * embedding_module.TSNE_NEIGHBOUR_STEPS // 3]


def test_tsne_neighbours_are_the_exact_nearest():
    from cnnlens.embeddings import _nearest_neighbours

    points = np.random.default_rng(1).normal(size=(300, 5))
    indices, distances = _nearest_neighbours(points, 7, lambda d, t: None, None)
    full = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_array_equal(indices, np.argsort(full, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :7], rtol=1e-4, atol=1e-4)


def test_embedding_refuses_what_it_cannot_do(stats):
    with pytest.raises(ValueError, match="method must be one of pca, tsne, umap"):
        embedding(stats, method="mds")
    with pytest.raises(ValueError, match="at least 2 images"):
        embedding(np.zeros((1, 4)))
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install umap-learn"):
            embedding(stats, method="umap")


@pytest.mark.parametrize(
    ("row", "map_shape", "box"),
    [
        ({"y": 3, "x": 5}, (14, 14), (10, 6, 12, 8)),  # one map cell: 2×2 pixels
        ({"y": 1, "x": 2}, (3, 3), (18, 9, 28, 19)),  # cells of 9.33 pixels, partly covered
    ],
)
def test_fire_box_without_a_field_is_the_map_cell_scaled_to_the_input(row, map_shape, box):
    assert fire_box(row, map_shape, (28, 28)) == box


@pytest.mark.parametrize(
    ("layer", "y", "x"),
    [("conv_2", 0, 0), ("conv_2", 14, 27), ("pool_2", 3, 5), ("conv_4", 6, 0), ("pool_4", 6, 6)],
)
def test_fire_box_is_the_part_the_value_reads_by_the_gradient_method(demo, layer, y, x):
    from tests.test_receptive_fields import gradient_boxes

    field = demo.layers.receptive_field(layer, demo.spec.shape)
    map_shape = (field.rows.shape[1], field.cols.shape[1])
    expected = gradient_boxes(demo.model, demo.spec.shape, [(demo.layers.path(layer), 0, y, x)])
    assert fire_box({"y": y, "x": x}, map_shape, (28, 28), field, 0) == expected[0]


def test_fire_box_refuses_a_position_outside_the_map_or_a_field_of_another_size(demo):
    with pytest.raises(ValueError, match=r"outside a 14×14 map"):
        fire_box({"y": 14, "x": 0}, (14, 14), (28, 28))
    field = demo.layers.receptive_field("conv_2", demo.spec.shape)  # 28×28 maps
    with pytest.raises(ValueError, match="take the layer's field for this input size"):
        fire_box({"y": 1, "x": 1}, (14, 14), (28, 28), field)


def test_receptive_fields_come_from_the_layer_table(demo):
    expected = {"conv_1": 3, "conv_2": 5, "pool_2": 6, "conv_3": 10, "conv_4": 14, "pool_4": 16}
    fields = {name: demo.layers.receptive_field(name, demo.spec.shape) for name in expected}
    assert {name: field.size for name, field in fields.items()} == expected
    table = demo.layers.table(demo.spec.shape).set_index("layer")
    assert {name: table.loc[name, "receptive field"] for name in expected} == expected


def test_uint8_image_is_the_image_the_network_sees(demo, digits):
    image = load_dataset(digits).load_image("img_0.png")
    pixels = to_uint8_image(demo.batch(image), demo.spec)
    np.testing.assert_array_equal(pixels, np.asarray(image))


def test_difference_subtracts_the_second_map():
    a, b = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    np.testing.assert_array_equal(difference(a, b), a - b)
    assert difference(a, b).dtype == np.float32
    with pytest.raises(ValueError, match="cannot be compared"):
        difference(a, np.ones((3, 2)))


# --- Grad-CAM ---------------------------------------------------------------------------


def reference_cam(model: nn.Module, module_of, x: torch.Tensor, target: int | None) -> np.ndarray:
    """Grad-CAM by hand: ReLU(sum over channels of mean(gradient) × activation), upsampled."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    kept = {}
    handle = module_of(model).register_forward_hook(lambda m, i, out: kept.update(act=out))
    x = x.clone().requires_grad_(True)
    logits = model(x)
    handle.remove()
    target = int(logits.argmax()) if target is None else target
    (gradient,) = torch.autograd.grad(logits[0, target], kept["act"])
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * kept["act"]).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return cam[0, 0].detach().numpy()


@pytest.mark.parametrize(("layer", "target"), [("conv_3", None), ("conv_4", 3), ("relu_2", 7)])
def test_grad_cam_equals_the_hand_written_reference(demo, digits, layer, target):
    image = load_dataset(digits).load_image("img_2.png")
    batch = demo.batch(image)
    index = layer_names(demo.model).index(layer)
    expected = reference_cam(demo.model, lambda m: m.features[index], batch, target)
    cam = grad_cam(demo, batch, layer, class_index=target)
    assert cam.shape == (28, 28) and cam.dtype == np.float32
    assert cam.max() > 0
    np.testing.assert_allclose(cam, expected, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_stats_and_grad_cam_equal_the_cpus(demo, digits, stats):
    on_gpu = open_model("demo", device="cuda")
    dataset = load_dataset(digits)
    found = layer_stats(on_gpu, dataset, "conv_3", batch_size=4, workers=2)
    assert found.filenames == stats.filenames
    # float32 on the GPU, not torch's default TF32.
    np.testing.assert_allclose(found.mean, stats.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(found.max, stats.max, rtol=1e-4, atol=1e-5)
    batch = demo.batch(dataset.load_image("img_2.png"))
    cam = grad_cam(on_gpu, batch, "conv_3", class_index=3)
    expected = grad_cam(demo, batch, "conv_3", class_index=3)
    assert cam.dtype == np.float32 and cam.max() > 0
    np.testing.assert_allclose(cam, expected, rtol=1e-4, atol=1e-5 * float(expected.max()))


def test_grad_cam_leaves_the_model_as_it_was(demo, digits):
    image = load_dataset(digits).load_image("img_1.png")
    before = [getattr(m, "inplace", None) for m in demo.model.modules()]
    grads = [p.requires_grad for p in demo.model.parameters()]
    grad_cam(demo, demo.batch(image), "conv_2")
    assert [getattr(m, "inplace", None) for m in demo.model.modules()] == before
    assert [p.requires_grad for p in demo.model.parameters()] == grads
    assert all(not m._forward_hooks for m in demo.model.modules())
    assert all(p.grad is None for p in demo.model.parameters())


def test_grad_cam_is_safe_from_many_threads(demo, digits):
    dataset = load_dataset(digits)
    batches = [demo.batch(dataset.load_image(f"img_{i}.png")) for i in range(6)]
    expected = [grad_cam(demo, batch, "conv_4") for batch in batches]
    found: list[np.ndarray | None] = [None] * 6
    start = threading.Barrier(6)

    def run(i: int) -> None:
        start.wait()
        found[i] = grad_cam(demo, batches[i], "conv_4")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for cam, reference in zip(found, expected, strict=True):
        np.testing.assert_array_equal(cam, reference)


class Branches(nn.Module):
    """Not a plain stack: two branches added, so layers go by qualified module names."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True))
        self.left = nn.Conv2d(4, 6, 3, padding=1)
        self.right = nn.Conv2d(4, 6, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.relu(self.left(x) + self.right(x)))


def test_grad_cam_on_qualified_module_names():
    torch.manual_seed(0)
    loaded = LoadedModel(
        name="branches",
        model=Branches().eval(),
        spec=InputSpec("L", (12, 12)),
        classes=("a", "b", "c"),
        weights="random weights",
        weights_id="random-seed0",
        sequential=False,
    )
    batch = torch.randn(1, 1, 12, 12)
    for layer, module_of in (("left", lambda m: m.left), ("stem.0", lambda m: m.stem[0])):
        expected = reference_cam(loaded.model, module_of, batch, 2)
        np.testing.assert_allclose(grad_cam(loaded, batch, layer, 2), expected, atol=1e-6)


def test_grad_cam_refuses_what_it_cannot_explain(demo):
    batch = torch.zeros(2, 1, 28, 28)
    with pytest.raises(ValueError, match="explains one image"):
        grad_cam(demo, batch, "conv_1")
    with pytest.raises(ValueError, match="between 0 and 9; got 10"):
        grad_cam(demo, batch[:1], "conv_1", class_index=10)
    with pytest.raises(ValueError, match="Unknown layer 'conv_9'"):
        grad_cam(demo, batch[:1], "conv_9")
