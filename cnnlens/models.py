"""The model zoo: the embedded demo CNN and torchvision's classifiers, their weights
(pretrained, random or the user's own file) and the input spec those weights expect.

:func:`open_model` is the one way in: it returns a :class:`LoadedModel` that
knows its input spec, class names, layer names and where its weights came from.
Pretrained weights are read from the local torch hub cache and downloaded only
when asked; without them a network gets seeded random weights and a note that
says so, never an error.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cnnlens.data import Dataset, load_dataset
from cnnlens.layers import Layers
from cnnlens.preprocess import to_batch
from cnnlens.private_copy import PrivateCopy
from cnnlens.registry import (
    DEMO_DATASET_DIR,
    DEMO_WEIGHTS,
    InputSpec,
    ModelInfo,
    default_weights,
    model_info,
)
from cnnlens.weights import fit_weights, load_weights

if TYPE_CHECKING:
    from cnnlens.extractor import FeatureExtractor
    from cnnlens.lens import Lens

__all__ = [
    "DEMO_DATASET_DIR",
    "DemoCNN",
    "LoadedModel",
    "demo_dataset",
    "demo_model",
    "open_model",
    "pick_device",
]


class DemoCNN(nn.Module):
    """A small VGG-like CNN for 28×28 digits: a sequential ``features`` and a classifier.

    Like VGG, each conv is followed by an in-place ReLU (no batch norm), so a lens
    on a conv layer must keep its pre-ReLU values apart. Takes N×1×28×28 pixel
    values in [0, 1] as they are: it was trained on them, so callers normalise
    nothing. Returns N×``num_classes`` class logits (10 digits by default).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(1, 32),
            *block(32, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A network with its weights, ready to look into: what :func:`open_model` returns.

    Attributes:
        name: the registry name, e.g. ``"demo"`` or ``"resnet18"``.
        model: the full classifier in eval mode on its device (shared: never train it).
        spec: the preprocessing its weights expect.
        classes: the names of its outputs, or ``None``.
        weights: where the weights came from, in words ("pretrained IMAGENET1K_V1").
        weights_id: a stable id of the weights for disk caches: the first 16 hex
            digits of the weights file's sha256, the pretrained weights' name, or
            ``"random-seed0"``.
        sequential: whether the model has renamed layers (``conv_1``...) besides its
            qualified module names (``layer1.0.conv1``), by the rule of
            :mod:`cnnlens.layers` (VGG, AlexNet and the demo have them).
        notes: banners for people: random weights, tensors that did not fit.
    """

    name: str
    model: nn.Module
    spec: InputSpec
    classes: tuple[str, ...] | None
    weights: str
    weights_id: str
    sequential: bool
    notes: tuple[str, ...] = ()

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating-point dtype."""
        return next(self.model.parameters()).dtype

    @functools.cached_property
    def layers(self) -> Layers:
        """The model's layers: qualified module names, and renamed layers (``conv_1``...)
        where the model has them."""
        return Layers(self.model)

    @functools.cached_property
    def private_copy(self) -> PrivateCopy:
        """The one copy that every lens, extractor, dataset pass and Grad-CAM of this model
        runs on: its own modules over the model's tensors, so it costs almost no memory."""
        return PrivateCopy(self.model, share_tensors=True)

    def layer_names(self) -> list[str]:
        """The layers to list: renamed layers where the model has them, else qualified module
        names. Every qualified module name is a valid layer too."""
        return list(self.layers.names)

    def default_layers(self) -> list[str]:
        """The layers to show first.

        For a model with renamed layers, its conv layers. For any other network
        (and a renamed one with fewer than two convs), the last
        module of each spatial-resolution stage of its trunk (ResNet's ``layer1``
        to ``layer4``, say), at most five, found from the output shapes of one
        forward on the meta device.
        """
        names = self.layer_names()
        convs = [name for name in names if name.startswith("conv")]
        if self.layers.renamed and len(convs) >= 2:
            return convs
        return self._stages or names[:1]

    @functools.cached_property
    def _stages(self) -> list[str]:
        table = self.layers.table(self.spec.shape)
        return _trunk_stages(
            list(table["layer"]), list(table["output shape"]), input_height=self.spec.size[0]
        )

    def extractor(self, targets: str | Sequence[str]) -> Lens | FeatureExtractor:
        """An extractor for some target layers: renamed layers or qualified module names.

        A model with renamed layers gets a :class:`~cnnlens.lens.Lens` (the same
        extraction, with the renamed net to show), any other a
        :class:`~cnnlens.extractor.FeatureExtractor`. Every extractor of this model
        runs on :attr:`private_copy`: it costs no copy of its own, and dropping it
        frees nothing but itself.

        Raises:
            TypeError: if targets are not strings.
            ValueError: if a target is not a layer of this model.
        """
        from cnnlens.extractor import FeatureExtractor
        from cnnlens.lens import Lens

        if self.layers.renamed:
            return Lens(self.private_copy, targets)
        return FeatureExtractor(self.private_copy, targets)

    def batch(self, images: Image.Image | list[Image.Image]) -> torch.Tensor:
        """Preprocess images as the weights expect, on the model's device and dtype."""
        return to_batch(images, self.spec).to(self.device, self.dtype)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray | None:
        """Class probabilities (softmax) for a batch: N×K float32, or ``None`` without classes.

        Raises:
            ValueError: if the batch does not fit the network.
        """
        if self.classes is None:
            return None
        with torch.inference_mode():
            try:
                logits = self.model(
                    batch.to(self.device, self.dtype, memory_format=torch.channels_last)
                )
            except RuntimeError as error:
                raise ValueError(
                    f"A batch of shape {tuple(batch.shape)} does not fit {self.name}: {error}"
                ) from error
            return torch.softmax(logits.float(), dim=1).cpu().numpy()


def _trunk_stages(names: list[str], shapes: list[str], input_height: int) -> list[str]:
    """The last module of each resolution stage, from a module table's names and shapes.

    A stage is the set of maps at one downsampling level (input height over map
    height, as a power of two, so Inception's 149 and 147 rows count as one). The
    modules are read from the root down, and a container is opened only when it
    downsamples at least four times over: a whole trunk (the ``features`` of a
    MobileNet), not one strided block.
    """
    levels: dict[str, int | None] = {}
    for name, shape in zip(names, shapes, strict=True):
        dims = [int(d) for d in shape.split("×")] if shape else []
        levels[name] = (
            round(math.log2(input_height / dims[1]))
            if len(dims) == 3 and dims[1] > 1 and dims[2] > 1
            else None
        )
    children: dict[str, list[str]] = {}
    for name in names:
        children.setdefault(name.rpartition(".")[0], []).append(name)

    def flat(parent: str, level: int) -> tuple[list[str], int]:
        """The stage candidates inside ``parent``, given the level of its input."""
        out: list[str] = []
        for child in children.get(parent, []):
            after = levels[child]
            if after is None:  # not called (a ModuleList: its items are) or not a map
                inner, level = flat(child, level)
                out.extend(inner)
            elif after - level >= 2 and child in children:
                out.extend(flat(child, level)[0])
                level = after
            else:
                out.append(child)
                level = after
        return out, level

    last: dict[int, str] = {}
    for name in flat("", 0)[0]:
        level = levels[name]
        if level is not None:
            last.pop(level, None)  # keep stages in the order their last module comes
            last[level] = name
    stages = list(last.values())
    if len(stages) > 5:
        stages = [stages[round(i * (len(stages) - 1) / 4)] for i in range(5)]
    return stages


# What torchvision's builders set when they load pretrained weights. The auxiliary
# classifiers only train; leaving them out keeps them off the layer list.
_BUILD_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"transform_input": True, "aux_logits": False, "init_weights": False},
    "inception_v3": {"transform_input": True, "aux_logits": False, "init_weights": False},
}
_build_lock = threading.Lock()


def _build(name: str, num_classes: int | None = None, *, skeleton: bool = False) -> nn.Module:
    """The network as torchvision builds it for its default weights, with seeded random values.

    A skeleton has its tensors on the meta device: no time goes into random
    values that a weights file replaces. Where a builder computes with tensors
    (RegNet), the skeleton is a real network.
    """
    if skeleton:
        try:
            with torch.device("meta"):
                return _build(name, num_classes)
        except (NotImplementedError, RuntimeError):
            pass
    if name == "demo":
        kwargs: dict[str, Any] = {"num_classes": num_classes or 10}
        builder: Callable[..., nn.Module] = DemoCNN
    else:
        from torchvision.models import get_model_builder

        meta = default_weights(name).meta
        kwargs = {
            **_BUILD_KWARGS.get(name, {}),
            "num_classes": num_classes or len(meta["categories"]),
        }
        if name.startswith("vit_"):
            kwargs["image_size"] = meta["min_size"][0]
        elif name == "maxvit_t":
            kwargs["input_size"] = meta["min_size"]
        builder = get_model_builder(name)
    # One seed for every process, and no other thread drawing numbers in between.
    with _build_lock, torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return builder(**kwargs)


def open_model(
    name: str,
    *,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    allow_download: bool = False,
    progress: Callable[[int, int], None] | None = None,
    classes: Sequence[str] | None = None,
) -> LoadedModel:
    """Build a registered model with its weights, in eval mode, ready to look into.

    Args:
        name: a registry name (see :data:`cnnlens.registry.MODELS`).
        weights: ``None`` for the model's default (the demo's trained weights;
            torchvision's pretrained weights from the local hub cache, downloaded
            only with ``allow_download``, else random ones with a note);
            ``"random"`` for seeded random weights; or the path of your own
            state_dict file (``.pt``, ``.pth``, ``.safetensors``).
        device: where the model runs (see :func:`pick_device`). On a GPU,
            float32 convolutions are then exact for the process (:func:`exact_float32`).
        dtype: a floating-point dtype to cast the model to, e.g. ``torch.bfloat16``.
        allow_download: fetch missing pretrained weights from download.pytorch.org
            (never under ``CNNLENS_OFFLINE=1``: the note then says so).
        progress: called with (bytes done, bytes in all) while downloading.
        classes: names for the outputs of your own weights' classifier.

    Returns:
        A :class:`LoadedModel`.

    Raises:
        TypeError: if ``weights`` is neither ``None``, a string nor a path.
        ValueError: for an unknown model, a weights file that cannot be read or
            does not fit the architecture, or class names of the wrong count.
    """
    info = model_info(name)
    fitted = fit_weights(name, weights, _build, allow_download=allow_download, progress=progress)
    notes = list(fitted.notes)
    spec = _spec_for(info, fitted.channels)
    if classes is not None:
        classes = tuple(map(str, classes))
        if len(classes) != fitted.outputs:
            raise ValueError(
                f"{len(classes)} class names were given, but the classifier has "
                f"{fitted.outputs} outputs."
            )
    elif fitted.num_classes is not None:
        classes = tuple(str(i) for i in range(fitted.num_classes))
        notes.append(
            f"The classifier has {fitted.num_classes} outputs: classes are named by index."
        )
    elif info.classes is not None:
        classes = info.classes
    else:
        classes = tuple(default_weights(name).meta["categories"])

    # The model is this LoadedModel's own, and its private copy shares its tensors:
    # channels-last makes convolutions about twice as fast on CPU, and no gradient of a
    # parameter is ever needed (Grad-CAM differentiates with respect to a layer's output).
    model = fitted.model.eval().to(device=device, dtype=dtype, memory_format=torch.channels_last)
    model.requires_grad_(False)
    if torch.device(device).type == "cuda":
        exact_float32()
    return LoadedModel(
        name=name,
        model=model,
        spec=spec,
        classes=classes,
        weights=fitted.description,
        weights_id=fitted.weights_id,
        sequential=Layers(model).renamed,
        notes=tuple(notes),
    )


def _spec_for(info: ModelInfo, channels: int | None) -> InputSpec:
    spec = info.spec
    if channels is None:
        return spec
    mode = "L" if channels == 1 else "RGB"
    mean, std = spec.mean, spec.std
    if mean is not None and std is not None:
        # One channel gets the channels' average statistics; three get the one copied.
        mean = (sum(mean) / len(mean),) * channels
        std = (sum(std) / len(std),) * channels
    return InputSpec(mode, spec.size, mean, std, spec.resize, spec.interpolation)


def exact_float32() -> None:
    """Have this process's float32 convolutions on a GPU computed in float32.

    torch lets cuDNN convolve float32 in TF32 by default (a 10-bit mantissa): on an
    H100 the demo's conv_2 maps then differed from the CPU's by up to 7.6e-4 in
    values near 0.1, enough to change hover values and reorder close channels.
    cnnlens shows values, so :func:`open_model` calls this for a model on a GPU;
    bfloat16 is the fast way.
    The setting is torch's, for the whole process. torch's older flag is set too,
    and recurrent layers alike: reading ``torch.backends.cudnn.allow_tf32`` raises
    unless the three agree.
    """
    cudnn = torch.backends.cudnn
    cudnn.allow_tf32 = False
    cudnn.conv.fp32_precision = "ieee"
    cudnn.rnn.fp32_precision = "ieee"


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA when available (or when asked for and present), CPU otherwise.

    Raises:
        ValueError: if ``preferred`` names a device this machine does not have.
    """
    if preferred in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preferred == "cpu":
        return torch.device("cpu")
    if preferred.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("CUDA was asked for, but this machine has no usable GPU; use 'cpu'.")
        return torch.device(preferred)
    raise ValueError(f"Unknown device {preferred!r}: use 'auto', 'cpu' or 'cuda'.")


def demo_model(device: str | torch.device = "cpu") -> DemoCNN:
    """The embedded demo CNN, trained on the demo digits, in eval mode."""
    model = DemoCNN()
    model.load_state_dict(load_weights(DEMO_WEIGHTS))
    return model.eval().to(device)


def demo_dataset() -> Dataset:
    """The embedded demo dataset: 4,000 labelled MNIST digits and 1,000 test digits."""
    return load_dataset(DEMO_DATASET_DIR)
