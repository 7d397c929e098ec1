"""Ablation against references computed here: deep copies of the model with plain zeroing hooks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlens import ablation as ablation_module
from cnnlens.ablation import ClassAblation, ClassAblationSpec, ablate, ablation_by_class
from cnnlens.data import Dataset, load_dataset
from cnnlens.models import LoadedModel, demo_dataset
from cnnlens.results import Cancelled, from_arrays, to_arrays
from cnnlens.store import ResultStore

# The demo CNN's layers by their place in its features, written out here, not asked of cnnlens.
DEMO_PATHS = {"conv_1": "features.0", "conv_2": "features.2", "relu_3": "features.6"}


@pytest.fixture(scope="module")
def digits(demo) -> torch.Tensor:
    dataset = demo_dataset()
    names = dataset.rows("train")["filename"].tolist()[:16]
    return demo.batch([dataset.load_image(name, "L") for name in names])


def zeroing_copy(model: nn.Module, path: str, channel: int) -> nn.Module:
    """An independent copy of the model whose module at ``path`` has channel ``channel`` zeroed."""
    reference = copy.deepcopy(model).eval()

    def zero(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, channel] = 0
        return output

    reference.get_submodule(path).register_forward_hook(zero)
    return reference


@pytest.mark.parametrize(("layer", "channel"), [("conv_1", 11), ("conv_2", 31), ("relu_3", 7)])
def test_ablated_logits_equal_a_copy_with_a_zeroing_hook(demo, digits, layer, channel):
    before, after = ablate(demo, digits, layer, channel)
    with torch.no_grad():
        expected_before = copy.deepcopy(demo.model)(digits)
        expected_after = zeroing_copy(demo.model, DEMO_PATHS[layer], channel)(digits)
    torch.testing.assert_close(before, expected_before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, expected_after, rtol=1e-5, atol=1e-5)
    assert before.dtype == torch.float32 and before.device.type == "cpu"
    assert (after - before).abs().max() > 1e-3  # the channel matters


class Residual(nn.Module):
    """A small non-sequential network: qualified names, a skip connection, BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        out = self.bn1(self.conv1(x))
        out += x
        return self.fc(torch.flatten(self.pool(self.relu(out)), 1))


def test_a_plain_module_is_ablated_on_a_copy_and_left_as_it_was():
    torch.manual_seed(0)
    model = Residual().train()
    model.bn1.running_mean.uniform_(-0.5, 0.5)  # eval mode differs from train mode
    state = {name: value.clone() for name, value in model.state_dict().items()}
    batch = torch.randn((4, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    before, after = ablate(model, batch, "conv1", 5)
    with torch.no_grad():
        expected_before = copy.deepcopy(model).eval()(batch)
        expected_after = zeroing_copy(model, "conv1", 5)(batch)
    torch.testing.assert_close(before, expected_before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, expected_after, rtol=1e-5, atol=1e-5)
    assert (after - before).abs().max() > 1e-3
    # A unit of the last layer is a logit: zeroed, it is exactly 0 and the others stay.
    before, after = ablate(model, batch, "fc", 3)
    assert torch.equal(after[:, 3], torch.zeros(4))
    torch.testing.assert_close(after[:, [0, 1, 2, 4]], before[:, [0, 1, 2, 4]], rtol=0, atol=0)
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_the_shared_model_keeps_its_values_and_gets_no_hooks(demo, digits):
    state = {name: value.clone() for name, value in demo.model.state_dict().items()}
    ablate(demo, digits, "conv_2", 3)
    assert all(not m._forward_hooks for m in demo.model.modules())
    for name, value in demo.model.state_dict().items():
        assert torch.equal(value, state[name]), name
    # The private copy runs plainly afterwards: nothing of the ablation stayed on it.
    with torch.no_grad():
        expected = copy.deepcopy(demo.model)(digits)
    torch.testing.assert_close(demo.private_copy.run(digits, _Nothing()), expected)


class _Nothing:
    def on_output(self, path: str, inputs: object, output: object) -> None:
        return None


@pytest.mark.parametrize(
    ("layer", "channel", "error", "message"),
    [
        ("conv_9", 0, ValueError, r"Unknown layer 'conv_9'\. Valid layers: conv_1, "),
        ("conv_2", 32, ValueError, r"conv_2 has channels 0 to 31; got 32\."),
        ("conv_2", -1, ValueError, r"conv_2 has channels 0 to 31; got -1\."),
        ("conv_2", "1", TypeError, r"channel must be a whole number, not str"),
    ],
)
def test_bad_choices_raise_clear_errors(demo, digits, layer, channel, error, message):
    with pytest.raises(error, match=message):
        ablate(demo, digits, layer, channel)


def test_a_batch_that_does_not_fit_says_so(demo):
    with pytest.raises(ValueError, match=r"does not fit this network"):
        ablate(demo, torch.zeros((2, 1, 20, 20)), "conv_2", 0)


@pytest.fixture(scope="module")
def blended(tmp_path_factory) -> Dataset:
    """80 demo digits half drowned in noise (the model gets about 60% right), their labels,
    an unreadable file labelled 3 and a digit labelled 'x', which is no class."""
    root = tmp_path_factory.mktemp("blended")
    (root / "train").mkdir()
    source = demo_dataset()
    rows = source.rows("train").iloc[:80]
    rng = np.random.RandomState(0)
    lines = ["filename,label"]
    for name, label in zip(rows["filename"], rows["label"], strict=True):
        digit = np.asarray(source.load_image(name, "L"), dtype=np.float32)
        noise = rng.randint(0, 256, digit.shape)
        pixels = np.round(0.55 * digit + 0.45 * noise).astype(np.uint8)
        Image.fromarray(pixels).save(root / "train" / name)
        lines.append(f"{name},{label}")
    (root / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    lines.append("broken.png,3")
    source.load_image(rows["filename"].iloc[0], "L").save(root / "train" / "odd.png")
    lines.append("odd.png,x")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return load_dataset(root)


def reference_accuracy(
    demo: LoadedModel, dataset: Dataset, path: str, channel: int
) -> dict[str, dict[str, float]]:
    """Per class: images, and the share right before and after, from Pillow and plain torch."""
    classes = list(demo.classes or ())
    images, labels = [], []
    for name, label in zip(dataset.rows()["filename"], dataset.rows()["label"], strict=True):
        if str(label) not in classes:
            continue
        try:
            images.append(dataset.load_image(name, "L"))
        except ValueError:
            continue  # unreadable
        labels.append(classes.index(str(label)))
    batch = demo.batch(images)
    with torch.no_grad():
        plain = copy.deepcopy(demo.model)(batch).argmax(1).numpy()
        zeroed = zeroing_copy(demo.model, path, channel)(batch).argmax(1).numpy()
    truth = np.array(labels)
    found = {}
    for index in sorted(set(labels)):
        mine = truth == index
        found[classes[index]] = {
            "count": int(mine.sum()),
            "before": float((plain[mine] == index).mean()),
            "after": float((zeroed[mine] == index).mean()),
        }
    found["all"] = {
        "count": len(truth),
        "before": float((plain == truth).mean()),
        "after": float((zeroed == truth).mean()),
    }
    return found


@pytest.mark.parametrize("channel", [10, 31])
def test_accuracy_by_class_equals_an_independent_reference(demo, blended, channel):
    seen: list[tuple[int, int]] = []
    result = ablation_by_class(
        demo, blended, "conv_2", channel, batch_size=16, on_progress=lambda *p: seen.append(p)
    )
    expected = reference_accuracy(demo, blended, DEMO_PATHS["conv_2"], channel)
    overall = expected.pop("all")
    assert result.layer == "conv_2" and result.channel == channel
    assert result.classes == tuple(expected)
    np.testing.assert_array_equal(result.counts, [e["count"] for e in expected.values()])
    np.testing.assert_allclose(result.accuracy_before, [e["before"] for e in expected.values()])
    np.testing.assert_allclose(result.accuracy_after, [e["after"] for e in expected.values()])
    assert result.overall_before == pytest.approx(overall["before"])
    assert result.overall_after == pytest.approx(overall["after"])
    assert overall["count"] == 80 and result.unmatched == 1
    assert result.overall_before != result.overall_after  # this channel changes answers
    np.testing.assert_allclose(result.change, result.accuracy_after - result.accuracy_before)
    assert seen == [(16, 81), (32, 81), (48, 81), (64, 81), (80, 81), (81, 81)]


def test_cached_ablation_is_stored_and_read_back_without_computing(
    demo, blended, tmp_path, monkeypatch
):
    store = ResultStore(tmp_path / "store")
    spec = ClassAblationSpec(demo, blended, "conv_2", 31, batch_size=32)
    with pytest.raises(Cancelled):
        store.run(spec, should_stop=lambda: True)
    assert not store.folder.exists() or not list(store.folder.glob("*.npz"))
    computed = store.run(spec)
    assert len(list(store.folder.glob("*.npz"))) == 1
    monkeypatch.setattr(ablation_module, "ablation_by_class", None)  # computing would fail
    read = ResultStore(store.folder).run(ClassAblationSpec(demo, blended, "conv_2", 31))
    assert isinstance(read, ClassAblation)
    for field in ("layer", "channel", "classes", "overall_before", "overall_after", "unmatched"):
        assert getattr(read, field) == getattr(computed, field)
    for field in ("counts", "accuracy_before", "accuracy_after"):
        np.testing.assert_array_equal(getattr(read, field), getattr(computed, field))
    with pytest.raises(TypeError):  # another channel is another key: it would be computed
        store.run(ClassAblationSpec(demo, blended, "conv_2", 30))


def test_labels_that_name_no_class_are_refused(demo, tmp_path):
    root = tmp_path / "pets"
    (root / "train").mkdir(parents=True)
    source = demo_dataset()
    name = source.rows("train")["filename"].iloc[0]
    source.load_image(name, "L").save(root / "train" / "a.png")
    (root / "train.csv").write_text("filename,label\na.png,cat\n")
    with pytest.raises(ValueError, match=r"No label of the train split names one of demo's"):
        ablation_by_class(demo, load_dataset(root), "conv_2", 0)
    with pytest.raises(ValueError, match=r"conv_2 has channels 0 to 31; got 40\."):
        ablation_by_class(demo, load_dataset(root), "conv_2", 40)


def test_the_stored_result_must_fit_together():
    good = ClassAblation(
        "conv_1",
        2,
        ("0", "1"),
        np.array([3, 4]),
        np.array([1.0, 0.5]),
        np.array([0.5, 0.5]),
        0.7,
        0.5,
    )
    arrays = to_arrays(good)
    back = from_arrays(ClassAblation, arrays)
    assert back.classes == ("0", "1") and back.overall_before == 0.7
    np.testing.assert_array_equal(back.counts, [3, 4])
    arrays["counts"] = np.array([3])
    with pytest.raises(ValueError, match="does not fit together"):
        from_arrays(ClassAblation, arrays)
