"""Clear errors from the newest functions (issue 22, item 14): a forward that fails, a batch
that is not one, a class index that is not a class, a feature visualization too large for
memory, and NaN inputs. Each case asserts the exception's type and sentence, and that the
model, its weights and its flags are as they were.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import vit_b_16

import cnnlens.feature_visualization as visualize_module
from cnnlens.ablation import ablate
from cnnlens.explain import explain_value, padded_input
from cnnlens.extractor import build_extractor
from cnnlens.feature_visualization import MEMORY_LIMIT, visualize
from cnnlens.gradcam import grad_cam
from cnnlens.models import LoadedModel
from cnnlens.network import architecture_dot, overview
from cnnlens.one_image import image_features

NAN = "The input holds NaN \\(or infinite\\) values"
OWN_CODE = "The model's own code failed on an input of shape"


@dataclasses.dataclass
class Snapshot:
    """A model's weights (copied), its modules' training and in-place flags, its parameters'
    requires_grad, its hooks."""

    state: dict[str, torch.Tensor]
    flags: list[tuple[str, bool, object]]
    grads: list[bool]
    hooks: int

    @classmethod
    def of(cls, model: nn.Module) -> Snapshot:
        return cls(
            {key: value.clone() for key, value in model.state_dict().items()},
            [(n, m.training, getattr(m, "inplace", None)) for n, m in model.named_modules()],
            [p.requires_grad for p in model.parameters()],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        )

    def assert_same(self, model: nn.Module) -> None:
        after = Snapshot.of(model)
        assert after.flags == self.flags and after.grads == self.grads
        assert after.hooks == self.hooks
        assert after.state.keys() == self.state.keys()
        for key, value in self.state.items():
            assert torch.equal(after.state[key], value), key


@pytest.fixture
def untouched(demo: LoadedModel) -> Iterator[Callable[[nn.Module], None]]:
    """Checks, after the test, that the demo model and any model passed in are untouched."""
    watched = [(demo.model, Snapshot.of(demo.model))]
    yield lambda model: watched.append((model, Snapshot.of(model)))
    for model, snapshot in watched:
        snapshot.assert_same(model)


def image(demo: LoadedModel) -> torch.Tensor:
    return demo.batch(np.full((28, 28), 128, np.uint8))


class Fails(nn.ReLU):
    """An activation whose forward raises (so a stack with it keeps its renamed layers)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


def failing(error: Exception) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), Fails(error), nn.Flatten()).eval()


def loaded_with(demo: LoadedModel, model: nn.Module) -> LoadedModel:
    """The demo's LoadedModel around another module (its own private copy)."""
    return dataclasses.replace(demo, model=model, sequential=True)


# --- a forward that fails -------------------------------------------------------------------


def test_the_architecture_of_a_vit_at_the_wrong_size_names_the_assert(untouched):
    vit = vit_b_16().eval()
    untouched(vit)
    message = (
        f"{OWN_CODE} (1, 3, 100, 100) (AssertionError: Wrong image height! Expected 224 but "
        "got 100!). A check in its forward refused the input, most often for its size (a "
        "vision transformer asserts its image size): give it the size and channels the model "
        "was built for."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        architecture_dot(vit, input_shape=(3, 100, 100))


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (KeyError("stage3"), "KeyError: 'stage3'"),
        (IndexError("list index out of range"), "IndexError: list index out of range"),
        (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
        (RuntimeError("custom op failed"), "RuntimeError: custom op failed"),
    ],
)
def test_a_forward_that_raises_is_named_by_overview_architecture_and_extractors(
    demo, untouched, error, said
):
    model = failing(error)
    untouched(model)
    message = re.escape(f"{OWN_CODE} (1, 1, 8, 8) ({said}). ") + (
        "(A check in its forward refused|The error is in the model's forward, not in cnnlens)"
    )
    with pytest.raises(ValueError, match=message):
        overview(loaded_with(demo, model), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=message):
        build_extractor(model, "fails_1")(torch.zeros(1, 1, 8, 8))
    if isinstance(error, RuntimeError):  # the meta device cannot tell it from its own limits
        assert architecture_dot(model, input_shape=(1, 8, 8)).startswith("digraph")
    else:
        with pytest.raises(ValueError, match=message):
            architecture_dot(model, input_shape=(1, 8, 8))


def test_a_runtime_error_that_is_not_about_the_input_does_not_say_does_not_fit(demo, untouched):
    model = failing(RuntimeError("Boolean value of Tensor with more than one value is ambiguous"))
    untouched(model)
    with pytest.raises(ValueError, match=OWN_CODE) as raised:
        overview(loaded_with(demo, model), torch.zeros(1, 1, 8, 8))
    assert "does not fit" not in str(raised.value)
    assert "The error is in the model's forward, not in cnnlens" in str(raised.value)


def test_an_input_of_the_wrong_channels_or_size_does_not_fit(demo, untouched):
    fits = "The input of shape (1, 3, 28, 28) does not fit this network: "
    with pytest.raises(ValueError, match=re.escape(fits + "Given groups=1")):
        overview(demo, torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match=re.escape(fits + "Invalid channel dimensions.")):
        architecture_dot(demo, input_shape=(3, 28, 28))  # the meta device's own words
    with pytest.raises(ValueError, match=r"\(1, 1, 40, 40\) does not fit .* shapes cannot be"):
        overview(demo, torch.zeros(1, 1, 40, 40))
    with pytest.raises(ValueError, match=r"Give it the channels and size the model was built"):
        grad_cam(demo, torch.zeros(1, 1, 40, 40), "conv_4")


def test_a_forward_the_meta_device_cannot_run_still_draws_without_shapes(untouched):
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[x > 0]  # its shape depends on the values

    model = nn.Sequential(nn.Conv2d(1, 2, 3), DataDependent())
    untouched(model)
    text = architecture_dot(model, input_shape=(1, 8, 8))
    assert '"0#0" [label="0\\nConv2d"]' in text  # chained in module order, no shapes
    assert '"0#0" -> "1#0"' in text


# --- a batch that is not one ----------------------------------------------------------------


def test_padded_input_takes_one_four_d_image(demo, untouched):
    with pytest.raises(
        ValueError,
        match=re.escape(
            "padded_input explains one image: pass a 1×C×H×W batch, not 2 images "
            "(shape (2, 1, 28, 28)); take image i with x[i : i + 1]."
        ),
    ):
        padded_input(demo, "conv_2", torch.zeros(2, 1, 28, 28), 0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "padded_input takes an N×C×H×W batch, got a 3-D tensor of shape (1, 28, 28): add "
            "the batch dimension with x[None]."
        ),
    ):
        padded_input(demo, "conv_2", torch.zeros(1, 28, 28), 0)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda demo, x: grad_cam(demo, x, "conv_4"), "Grad-CAM"),
        (lambda demo, x: overview(demo, x), "The overview"),
        (lambda demo, x: padded_input(demo, "conv_2", x, 0), "padded_input"),
        (lambda demo, x: demo.extractor(["conv_1"])(x), "The extractor"),
        (lambda demo, x: ablate(demo, x, "conv_2", 0), "The extractor"),
    ],
)
def test_a_numpy_batch_says_how_to_make_a_tensor(demo, untouched, call, name):
    message = (
        f"{name} takes a torch.Tensor batch (N×C×H×W), not a numpy array: convert it with "
        "torch.from_numpy(array), or make one from an image with loaded.batch(pixels)."
    )
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        call(demo, np.zeros((1, 1, 28, 28), np.float32))


# --- Grad-CAM's class -----------------------------------------------------------------------


def test_grad_cam_takes_a_whole_class_in_range(demo, untouched):
    x = image(demo)
    with pytest.raises(
        TypeError,
        match=re.escape(
            "class_index must be a whole number from 0 to 9, or None for the predicted "
            "class; got 1.5."
        ),
    ):
        grad_cam(demo, x, "conv_4", 1.5)
    with pytest.raises(TypeError, match="got True"):
        grad_cam(demo, x, "conv_4", True)
    with pytest.raises(ValueError, match=re.escape("between 0 and 9; got 10.")):
        grad_cam(demo, x, "conv_4", 10)
    with pytest.raises(ValueError, match=re.escape("between 0 and 9; got -1.")):
        grad_cam(demo, x, "conv_4", -1)
    np.testing.assert_array_equal(
        grad_cam(demo, x, "conv_4", np.int64(3)), grad_cam(demo, x, "conv_4", 3)
    )


# --- feature visualization's memory ---------------------------------------------------------


def test_a_visualization_too_large_for_memory_names_the_size_that_fits(demo, untouched):
    # conv_1's forward keeps the input and 32 maps: 33 × 10000² × 4 bytes, twice with the
    # gradient.
    need = 2 * 33 * 10_000**2 * 4
    largest = int((MEMORY_LIMIT / (2 * 33 * 4)) ** 0.5)
    message = (
        f"A 10000×10000-pixel image for conv_1 needs about {need / 1e9:.1f} GB for its "
        f"forward and gradient, more than the 2 GB bound (MEMORY_LIMIT): choose "
        f"size={largest} or less."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        visualize(demo, "conv_1", 0, size=10_000, steps=1)


def test_the_largest_side_named_fits_and_one_more_does_not(demo, untouched, monkeypatch):
    monkeypatch.setattr(visualize_module, "MEMORY_LIMIT", 20_000_000)
    with pytest.raises(ValueError, match=r"choose size=(\d+) or less") as raised:
        visualize(demo, "conv_2", 0, size=1000, steps=1)
    largest = int(re.search(r"size=(\d+)", str(raised.value)).group(1))
    assert visualize(demo, "conv_2", 0, size=largest, steps=1).shape == (1, 1, largest, largest)
    with pytest.raises(ValueError, match=f"choose size={largest} or less"):
        visualize(demo, "conv_2", 0, size=largest + 1, steps=1)


def test_a_group_too_large_for_memory_is_split(demo, untouched, monkeypatch):
    together = visualize(demo, "conv_2", [0, 1, 2, 3], steps=4, batch_size=2)
    # One 28-px image to conv_2 keeps (1 + 32 + 32) × 28² × 4 bytes: two fit, four do not.
    one = 2 * (1 + 32 + 32) * 28 * 28 * 4
    monkeypatch.setattr(visualize_module, "MEMORY_LIMIT", 2 * one + 1)
    split = visualize(demo, "conv_2", [0, 1, 2, 3], steps=4, batch_size=4)
    torch.testing.assert_close(split, together, rtol=0, atol=0)


# --- NaN ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize(
    "call",
    [
        lambda demo, x: demo.extractor(["conv_1"])(x),
        lambda demo, x: overview(demo, x),
        lambda demo, x: grad_cam(demo, x, "conv_4"),
        lambda demo, x: explain_value(demo, "conv_1", x, 0, 0, 0),
        lambda demo, x: padded_input(demo, "conv_2", x, 0),
        lambda demo, x: ablate(demo, x, "conv_2", 0),
    ],
)
def test_an_input_with_nan_says_so(demo, untouched, call, bad):
    x = image(demo).clone()
    x[0, 0, 3, 4] = bad
    with pytest.raises(ValueError, match=f"^{NAN}: 1 of 784, so every map and answer"):
        call(demo, x)


def test_an_image_with_nan_says_so(demo, untouched):
    pixels = np.full((28, 28), 0.5, np.float32)
    pixels[2, :3] = np.nan
    with pytest.raises(
        ValueError, match=r"^The image holds NaN \(or infinite\) values: 3 of 784, so its maps"
    ):
        image_features(demo, pixels, ["conv_1"])
