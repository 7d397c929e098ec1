"""Relevance-ranked examples against a reference computed here, one image at a time, with
plain torch autograd on a copy of the demo model whose in-place ops are off."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from cnnlens import relevance as relevance_module
from cnnlens.data import Dataset, load_dataset
from cnnlens.insights import LayerStats, top_images
from cnnlens.models import LoadedModel, demo_dataset, demo_model
from cnnlens.preprocess import to_batch
from cnnlens.registry import InputSpec
from cnnlens.relevance import (
    ChannelRelevance,
    RelevanceSpec,
    TopRelevantSpec,
    channel_relevance,
    rank_agreement,
    top_relevant,
)
from cnnlens.results import Cancelled
from cnnlens.store import ResultStore

DIGITS = 40


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Dataset:
    """The first 40 demo digits and, between them, a file that is no image."""
    root = tmp_path_factory.mktemp("relevance")
    (root / "train").mkdir()
    source = demo_dataset()
    rows = source.rows("train").iloc[:DIGITS]
    lines = ["filename,label"]
    for position, (name, label) in enumerate(zip(rows["filename"], rows["label"], strict=True)):
        source.load_image(name, "L").save(root / "train" / name)
        lines.append(f"{name},{label}")
        if position == 20:
            (root / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
            lines.append("broken.png,3")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return load_dataset(root)


def reference(dataset: Dataset, path: str) -> dict[str, np.ndarray]:
    """Each readable image's predicted class and gradient × activation at a module, one
    image at a time: a plain copy, in-place ops off, a hook that keeps the output and
    returns None."""
    model = copy.deepcopy(demo_model()).eval()
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    kept: list[torch.Tensor] = []
    model.get_submodule(path).register_forward_hook(lambda m, i, o: kept.append(o) and None)
    found: dict[str, list] = {"predicted": [], "contribution": []}
    for name in dataset.index["filename"]:
        if name == "broken.png":
            continue
        kept.clear()
        logits = model(to_batch([dataset.load_image(name)]))
        predicted = int(logits.argmax())
        (gradient,) = torch.autograd.grad(logits[0, predicted], kept[0])
        found["predicted"].append(predicted)
        found["contribution"].append((kept[0] * gradient)[0].detach().numpy())
    return {name: np.array(values) for name, values in found.items()}


def test_the_stored_pass_equals_a_per_image_computation(demo, digits, tmp_path, monkeypatch):
    seen: list[tuple[int, int]] = []
    store = ResultStore(tmp_path / "store")
    spec = RelevanceSpec(demo, digits, "conv_4", batch_size=16)
    found = store.run(spec, on_progress=lambda *p: seen.append(p))
    expected = reference(digits, "features.7")
    contribution = expected["contribution"]  # N×C×H×W
    assert found.layer == "conv_4" and found.map_shape == (64, 14, 14)
    assert found.filenames == demo_dataset().rows("train")["filename"].tolist()[:DIGITS]
    assert found.labels == demo_dataset().rows("train")["label"].tolist()[:DIGITS]
    assert found.classes == tuple(str(d) for d in range(10))
    np.testing.assert_array_equal(found.predicted, expected["predicted"])
    assert len(set(found.predicted.tolist())) > 3  # the batch mixes predicted classes
    np.testing.assert_allclose(found.relevance, contribution.sum(axis=(2, 3)), atol=2e-4)
    images, channels = np.indices(found.peak_y.shape)
    at_peak = contribution[images, channels, found.peak_y, found.peak_x]
    np.testing.assert_allclose(at_peak, contribution.max(axis=(2, 3)), atol=1e-5)
    assert seen == [(16, DIGITS + 1), (32, DIGITS + 1), (DIGITS + 1, DIGITS + 1)]
    answers = store.peek(spec.predictions)  # the same pass gave the model's answers
    assert answers.filenames == found.filenames
    np.testing.assert_array_equal(answers.predicted, found.predicted)
    assert len(list(store.folder.glob("*.npz"))) == 2
    monkeypatch.setattr(relevance_module, "channel_relevance", None)  # computing would fail
    read = ResultStore(store.folder).run(RelevanceSpec(demo, digits, "features.7"))
    for field in ("layer", "map_shape", "filenames", "labels", "classes"):
        assert getattr(read, field) == getattr(found, field)
    for field in ("predicted", "relevance", "peak_y", "peak_x"):
        np.testing.assert_array_equal(getattr(read, field), getattr(found, field))
    shown = ResultStore(store.folder).peek(TopRelevantSpec(spec, 5, k=4))
    assert shown.equals(top_relevant(found, 5, k=4))


def test_units_of_a_linear_layer_and_the_layer_behind_a_relu(demo, digits):
    units = channel_relevance(demo, digits, "classifier.2", batch_size=32)
    expected = reference(digits, "classifier.2")
    assert units.map_shape == (128,)
    np.testing.assert_allclose(units.relevance, expected["contribution"], atol=2e-4)
    assert not units.peak_y.any() and not units.peak_x.any()
    # Gradient × activation is zero wherever the ReLU cuts: conv_4 scores as relu_4 does.
    before = channel_relevance(demo, digits, "conv_4", batch_size=32, workers=1)  # a process
    after = channel_relevance(demo, digits, "relu_4", batch_size=32)
    np.testing.assert_allclose(before.relevance, after.relevance, atol=1e-6)


def made(relevance: list[list[float]], labels: list | None = None) -> ChannelRelevance:
    count, channels = np.shape(relevance)
    return ChannelRelevance(
        layer="conv_1",
        map_shape=(channels, 3, 3),
        filenames=[f"{i}.png" for i in range(count)],
        labels=labels if labels is not None else [i % 2 for i in range(count)],
        classes=("zero", "one"),
        predicted=np.array([i % 2 for i in range(count)]),
        relevance=np.array(relevance, np.float32),
        peak_y=np.arange(count * channels, dtype=np.int32).reshape(count, channels) % 3,
        peak_x=np.full((count, channels), 2, np.int32),
    )


def stats_of(result: ChannelRelevance, maxima: np.ndarray) -> LayerStats:
    """Layer statistics of the same images whose means and maxima are ``maxima``."""
    peaks = (result.peak_y, result.peak_x)
    shape = (result.map_shape[0], 3, 3)
    return LayerStats("conv_1", shape, result.filenames, result.labels, maxima, maxima, *peaks)


def test_top_relevant_ranks_most_relevant_first_ties_in_dataset_order():
    result = made([[0.5, 1.0], [2.0, -1.0], [0.5, 0.0], [-3.0, 4.0]])
    top = top_relevant(result, 0, k=3)
    assert top["filename"].tolist() == ["1.png", "0.png", "2.png"]
    assert top["score"].tolist() == [2.0, 0.5, 0.5]
    assert top["label"].tolist() == [1, 0, 0]
    assert top["predicted"].tolist() == ["one", "zero", "zero"]
    assert top["y"].tolist() == [2 % 3, 0, 4 % 3] and top["x"].tolist() == [2, 2, 2]
    among = top_relevant(result, 1, k=9, among=np.array([True, True, False, True]))
    assert among["filename"].tolist() == ["3.png", "0.png", "1.png"]
    stats = stats_of(result, result.relevance)
    shared = list(top_images(stats, 0).columns)
    assert list(top.columns) == [*shared, "predicted"]  # side by side, the same meaning
    with pytest.raises(ValueError, match=r"conv_1 has channels 0 to 1; got 2\."):
        top_relevant(result, 2)
    with pytest.raises(TypeError, match="channel must be an integer"):
        top_relevant(result, 1.0)
    with pytest.raises(ValueError, match="k must be at least 1"):
        top_relevant(result, 0, k=0)
    with pytest.raises(ValueError, match="among must mark each of the 4 images"):
        top_relevant(result, 0, among=np.ones(3, bool))


def test_rank_agreement_counts_the_shared_top_images_and_spearmans_rho():
    rng = np.random.RandomState(0)
    relevance = rng.randn(30, 2)
    result = made(relevance.tolist())
    maxima = (relevance + rng.randn(30, 2)).astype(np.float32)
    stats = stats_of(result, maxima)
    found = rank_agreement(stats, result, 1, k=5)
    shared = set(np.argsort(-maxima[:, 1])[:5]) & set(np.argsort(-relevance[:, 1])[:5])
    assert found.channel == 1 and found.k == 5 and found.overlap == len(shared)
    assert found.spearman == pytest.approx(spearmanr(maxima[:, 1], relevance[:, 1])[0])
    dead = made([[0.0, 1.0]] * 30)
    assert np.isnan(rank_agreement(stats, dead, 0).spearman)
    other = dataclasses.replace(result, filenames=[f"x{i}.png" for i in range(30)])
    with pytest.raises(ValueError, match="not of the same images and channels"):
        rank_agreement(stats, other, 0)


def test_cancel_keeps_nothing_and_leaves_the_callers_model_untouched(demo, digits, tmp_path):
    model = demo.model
    before = {name: value.clone() for name, value in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    store = ResultStore(tmp_path / "store")
    spec = RelevanceSpec(demo, digits, "conv_2", batch_size=8)
    asked = iter([False, False, True])
    with pytest.raises(Cancelled):
        store.run(spec, should_stop=lambda: next(asked, True))
    with pytest.raises(Cancelled):
        store.run(spec, should_stop=lambda: True)
    assert not store.folder.exists() or not list(store.folder.glob("*.npz"))
    assert store.peek(spec) is None
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


class Maps(nn.Module):
    """A network that ends in maps, not class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.tail = nn.Conv2d(2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.conv(x))


def test_bad_input_is_refused_with_the_valid_choices(demo, digits, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown layer 'conv_9'\. Valid layers: conv_1, relu_1"):
        channel_relevance(demo, digits, "conv_9")
    with pytest.raises(ValueError, match="Unknown layer"):
        RelevanceSpec(demo, digits, "conv_9").key  # noqa: B018
    without = dataclasses.replace(demo, classes=None)
    with pytest.raises(ValueError, match="no classes.*choose a classifier"):
        channel_relevance(without, digits, "conv_4")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        channel_relevance(demo, digits, "conv_4", batch_size=0)
    with pytest.raises(ValueError, match="workers must be 0 or more"):
        channel_relevance(demo, digits, "conv_4", workers=-1)
    maps = LoadedModel(
        "maps", Maps().eval(), InputSpec("L", (28, 28)), ("a", "b", "c"), "random", "maps-0", False
    )
    with pytest.raises(ValueError, match=r"needs class scores \(N×K\).*outputs \(8, 3, 28, 28\)"):
        channel_relevance(maps, digits, "conv", batch_size=8)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.png").write_bytes(b"not an image")
    (tmp_path / "train.csv").write_text("filename,label\na.png,1\n")
    with pytest.raises(ValueError, match="no readable images"):
        channel_relevance(demo, load_dataset(tmp_path, check_images=False), "conv_4")
