"""The model zoo: the embedded demo CNN and torchvision's classifiers, their weights
(pretrained, random or the user's own file) and the preprocessing those weights expect.

:func:`open_model` is the one way in: it returns a :class:`LoadedModel` that
knows its input spec, class names, layer names and where its weights came from.
Pretrained weights are read from the local torch hub cache and downloaded only
when asked; without them a network gets seeded random weights and a note that
says so, never an error.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import socket
import threading
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image
from torch import nn

from cnnlens.data import Dataset, load_dataset, to_mode
from cnnlens.registry import (
    DEMO_DATASET_DIR,
    DEMO_INPUT,
    RANDOM_WEIGHTS_NOTE,
    InputSpec,
    ModelInfo,
    model_info,
)

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

    from cnnlens.extractor import FeatureExtractor
    from cnnlens.lens import Lens

__all__ = [
    "DEMO_DATASET_DIR",
    "DEMO_WEIGHTS",
    "DemoCNN",
    "LoadedModel",
    "demo_dataset",
    "demo_model",
    "download_weights",
    "load_model",
    "load_weights",
    "network_view",
    "open_model",
    "pick_device",
    "to_batch",
    "weights_status",
]

_ROOT = Path(__file__).resolve().parent
DEMO_WEIGHTS = _ROOT / "weights" / "demo_cnn.safetensors"
_ONLINE_HOST = ("download.pytorch.org", 443)


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
        sequential: whether the layers are the lens's renamed layers (``conv_1``...)
            rather than qualified module names (``layer1.0.conv1``).
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

    def layer_names(self) -> list[str]:
        """The layers a lens or extractor can read: renamed layers or qualified module names."""
        if self.sequential:
            from cnnlens.lens import layer_names

            return layer_names(self.model)
        from cnnlens.extractor import module_names

        return module_names(self.model)

    def default_layers(self) -> list[str]:
        """The layers to show first.

        For a sequential CNN, its conv layers. For any other network (and a
        sequential one with fewer than two convs, such as SqueezeNet), the last
        module of each spatial-resolution stage of its trunk (ResNet's ``layer1``
        to ``layer4``, say), at most five, found from the output shapes of one
        forward on the meta device.
        """
        names = self.layer_names()
        convs = [name for name in names if name.startswith("conv")]
        if self.sequential and len(convs) >= 2:
            return convs
        return self._stages or names[:1]

    @functools.cached_property
    def _stages(self) -> list[str]:
        if self.sequential:
            from cnnlens.lens import layer_table

            table = layer_table(self.model, self.spec.shape).rename(columns={"layer": "name"})
        else:
            from cnnlens.extractor import module_table

            table = module_table(self.model, self.spec.shape)
        return _trunk_stages(
            list(table["name"]), list(table["output shape"]), input_height=self.spec.size[0]
        )

    def extractor(self, targets: Sequence[str]) -> Lens | FeatureExtractor:
        """A lens (renamed layers) or an extractor (module names) for some target layers.

        Raises:
            ValueError: if a target is not a layer of this model.
        """
        from cnnlens.extractor import extractor_for

        return extractor_for(self.model, targets)

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
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
# torchvision's DenseNet files use old names ("norm.1"); its builder renames them so.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel, torch.compile
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_build_lock = threading.Lock()
_download_lock = threading.Lock()


def _default_weights(name: str) -> WeightsEnum:
    from torchvision.models import get_model_weights

    return get_model_weights(name)[model_info(name).weights]


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

        meta = _default_weights(name).meta
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


def _unwrap(state: object) -> object:
    """Find the state_dict inside a training checkpoint and drop wrapper prefixes."""
    while isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in _CONTAINER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if isinstance(state, dict) and state and all(isinstance(k, str) for k in state):
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state_dict safely: safetensors, or a torch file with ``weights_only=True``.

    A training checkpoint that holds the state_dict under ``"state_dict"``,
    ``"model"`` (and the like) is unwrapped, and the ``module.`` prefix of
    ``DataParallel`` is dropped.

    Raises:
        ValueError: if the file is missing, unreadable, carries code, or is not a state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No weights file at {path}.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # every loader failure becomes one clear sentence
        raise ValueError(
            f"{path.name} could not be loaded as weights: {str(error).splitlines()[0]} "
            "Only plain state_dict files (.safetensors, .pt, .pth) without code are accepted."
        ) from error
    state = _unwrap(state)
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise ValueError(
            f"{path.name} is not a state_dict (a mapping of names to tensors). Save weights "
            "with torch.save(model.state_dict(), path)."
        )
    return state


def _file_id(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _listed(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} and {len(keys) - limit} more" if len(keys) > limit else shown


def _tensors(count: int) -> str:
    return f"{count} tensor" if count == 1 else f"{count} tensors"


def _shape(tensor: torch.Tensor) -> str:
    return "×".join(map(str, tensor.shape)) or "scalar"


def _first_conv_key(state: dict[str, torch.Tensor]) -> str | None:
    return next((k for k, v in state.items() if k.endswith("weight") and v.dim() == 4), None)


def _head_key(state: dict[str, torch.Tensor]) -> str | None:
    return next(
        (k for k, v in reversed(state.items()) if k.endswith("weight") and v.dim() >= 2), None
    )


def _set_in_channels(model: nn.Module, key: str, channels: int) -> None:
    """Replace the first conv by one that takes ``channels`` channels (1 or 3)."""
    path = key.rpartition(".")[0]
    conv = model.get_submodule(path)
    model.set_submodule(
        path,
        nn.Conv2d(
            channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
        ),
    )
    if getattr(model, "transform_input", False):
        model.transform_input = False  # it mixes three ImageNet channels


@dataclass(frozen=True)
class _Fitted:
    model: nn.Module
    num_classes: int | None  # a head of another size than the architecture's
    channels: int | None  # an input of another channel count
    notes: tuple[str, ...]


def _fit(name: str, state: dict[str, torch.Tensor], source: str) -> _Fitted:
    """Build the network for a state_dict and load what fits, saying in words what did not.

    Raises:
        ValueError: if no tensor of the file fits the network.
    """
    title = f"{name} ({model_info(name).title})"
    state = {k: v for k, v in state.items() if not k.startswith(_AUX_PREFIXES)}
    if name.startswith("densenet"):
        state = {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    model = _build(name, skeleton=True)
    expected = model.state_dict()
    if not expected.keys() & state.keys():
        # A wrapper we do not know (Lightning's "model.", a "backbone."): one shared prefix.
        heads = {k.partition(".")[0] for k in state}
        if len(heads) == 1 and all("." in k for k in state):
            state = {k.partition(".")[2]: v for k, v in state.items()}

    num_classes = channels = None
    notes: list[str] = []
    head = _head_key(expected)
    if head in state and state[head].dim() == expected[head].dim():
        outputs = state[head].shape[0]
        if outputs != expected[head].shape[0]:
            num_classes = outputs
            model = _build(name, num_classes, skeleton=True)
            expected = model.state_dict()
    first = _first_conv_key(expected)
    if (
        first in state
        and state[first].dim() == 4
        and isinstance(model.get_submodule(first.rpartition(".")[0]), nn.Conv2d)
    ):
        wanted = state[first].shape[1]
        if wanted != expected[first].shape[1] and wanted in (1, 3):
            channels = wanted
            _set_in_channels(model, first, wanted)
            expected = model.state_dict()
            kind = "grayscale (1 channel)" if wanted == 1 else "colour (3 channels)"
            notes.append(f"{source} takes {kind} images: inputs are converted to that.")

    usable = {
        k: v.to(expected[k].dtype)  # a half-precision file into a float32 network
        for k, v in state.items()
        if k in expected and v.shape == expected[k].shape
    }
    if not usable:
        raise ValueError(
            f"These weights are not for {title}: none of the {len(state)} tensors in {source} "
            f"fit it (the file has {_listed(list(state))}; the network has "
            f"{_listed(list(expected))}). Choose the architecture the file was saved from."
        )
    mismatched = [k for k in state if k in expected and k not in usable]
    unexpected = [k for k in state if k not in expected]
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        notes.append(
            f"{source} lacks {_tensors(len(missing))} of the network, which keep random "
            f"values: {_listed(missing)}."
        )
    if unexpected:
        notes.append(
            f"{source} has {_tensors(len(unexpected))} that {title} does not use, left out: "
            f"{_listed(unexpected)}."
        )
    if mismatched:
        shapes = [f"{k} ({_shape(state[k])}, expected {_shape(expected[k])})" for k in mismatched]
        notes.append(
            f"{source} has {_tensors(len(mismatched))} of another shape than {title} "
            f"expects, left out: {_listed(shapes)}."
        )
    model.load_state_dict(usable, strict=False, assign=True)
    unset = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if all(n.endswith("num_batches_tracked") for n in unset):
        zeros = {n: torch.zeros((), dtype=torch.long) for n in unset}
        model.load_state_dict(zeros, strict=False, assign=True)
    else:  # tensors the file lacks keep seeded random values
        model = _build(name, num_classes)
        if channels is not None:
            _set_in_channels(model, first, channels)
        model.load_state_dict(usable, strict=False)
    return _Fitted(model, num_classes, channels, tuple(notes))


def _cached_file(name: str) -> Path:
    """Where torch's hub cache keeps a model's default pretrained weights."""
    url = _default_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


@functools.cache
def _online() -> bool:
    """Whether the weights server answers; asked once per process."""
    try:
        socket.create_connection(_ONLINE_HOST, timeout=1.5).close()
    except OSError:
        return False
    return True


def weights_status(name: str) -> str:
    """Whether a model's pretrained weights can be used here.

    Returns:
        ``"cached"`` (the demo's, or in the local torch hub cache), ``"downloadable"``
        (not cached, but the weights server answers) or ``"unavailable"``.

    Raises:
        ValueError: for an unknown model name.
    """
    if model_info(name).weights is None or _cached_file(name).is_file():
        return "cached"
    return "downloadable" if _online() else "unavailable"


def _weights_url(name: str) -> str:
    return _default_weights(name).url


def download_weights(name: str, progress: Callable[[int, int], None] | None = None) -> Path:
    """Download a model's default pretrained weights into the torch hub cache.

    The file is streamed into ``<name>.partial`` beside its place and moved
    there only once complete and matching the hash in its name, so an
    interrupted download never leaves a broken file in the cache.

    Args:
        name: a torchvision model of the registry.
        progress: called with (bytes done, bytes in all; 0 when unknown) per chunk.

    Returns:
        The path of the cached file.

    Raises:
        ValueError: for a model without pretrained weights, or a download that
            fails or does not match its hash.
    """
    if model_info(name).weights is None:
        raise ValueError(f"{name} has no pretrained weights to download.")
    target = _cached_file(name)
    with _download_lock:
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(_weights_url(name), timeout=30) as response:
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                with open(partial, "wb") as f:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise ValueError(f"The weights of {name} could not be downloaded: {error}") from error
        expected = re.search(r"-([a-f0-9]+)\.", target.name)  # torch.hub's naming rule
        if expected and not digest.hexdigest().startswith(expected[1]):
            partial.unlink()
            raise ValueError(
                f"The download of {target.name} is corrupt (its sha256 does not match); try again."
            )
        os.replace(partial, target)
    return target


def _pretrained(
    name: str, allow_download: bool, progress: Callable[[int, int], None] | None
) -> tuple[_Fitted, str, str] | str:
    """The pretrained network, its words and id; or, when not possible, why (a note)."""
    weights = _default_weights(name)
    path = _cached_file(name)
    if not path.is_file():
        if not (allow_download and _online()):
            return f"The pretrained weights of {name} are not in the local torch hub cache."
        try:
            download_weights(name, progress)
        except ValueError as error:
            return str(error)
    try:
        fitted = _fit(name, load_weights(path), path.name)
    except ValueError as error:
        return f"The cached pretrained weights of {name} cannot be used: {error}"
    return fitted, f"pretrained {weights.name}", weights.name


def _with_weights(
    name: str,
    weights: str | Path | None,
    allow_download: bool,
    progress: Callable[[int, int], None] | None,
) -> tuple[_Fitted, str, str, list[str]]:
    """The network with its weights, their words and id, and notes on where they came from."""
    notes: list[str] = []
    if weights is None:
        if model_info(name).weights is None:
            fitted = _fit(name, load_weights(DEMO_WEIGHTS), DEMO_WEIGHTS.name)
            return fitted, "trained demo weights", _file_id(DEMO_WEIGHTS), notes
        found = _pretrained(name, allow_download, progress)
        if not isinstance(found, str):
            return (*found, notes)
        notes.append(found)
        weights = "random"
    if weights == "random":
        notes.append(RANDOM_WEIGHTS_NOTE)
        return _Fitted(_build(name), None, None, ()), "random weights", "random-seed0", notes
    if not isinstance(weights, (str, Path)):
        raise TypeError(
            f"weights must be None, 'random' or the path of a state_dict file, "
            f"got {type(weights).__name__}."
        )
    path = Path(weights)
    return (
        _fit(name, load_weights(path), path.name),
        f"your file {path.name}",
        _file_id(path),
        notes,
    )


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
        allow_download: fetch missing pretrained weights from download.pytorch.org.
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
    fitted, described, weights_id, notes = _with_weights(name, weights, allow_download, progress)
    notes.extend(fitted.notes)
    spec = _spec_for(info, fitted.channels)
    outputs = _head_outputs(fitted.model)
    if classes is not None:
        classes = tuple(map(str, classes))
        if len(classes) != outputs:
            raise ValueError(
                f"{len(classes)} class names were given, but the classifier has {outputs} outputs."
            )
    elif fitted.num_classes is not None:
        classes = tuple(str(i) for i in range(fitted.num_classes))
        notes.append(
            f"The classifier has {fitted.num_classes} outputs: classes are named by index."
        )
    elif info.classes is not None:
        classes = info.classes
    else:
        classes = tuple(_default_weights(name).meta["categories"])

    # The model is this LoadedModel's own: channels-last makes its convolutions about
    # twice as fast on CPU (the lens and extractors work on copies of their own anyway).
    model = fitted.model.eval().to(device=device, dtype=dtype, memory_format=torch.channels_last)
    if torch.device(device).type == "cuda":
        exact_float32()
    return LoadedModel(
        name=name,
        model=model,
        spec=spec,
        classes=classes,
        weights=described,
        weights_id=weights_id,
        sequential=info.sequential,
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


def _head_outputs(model: nn.Module) -> int:
    return model.state_dict()[_head_key(model.state_dict())].shape[0]


def load_model(name: str, device: str | torch.device = "cpu") -> nn.Module:
    """Build a registered model with its default weights, in eval mode.

    Raises:
        ValueError: for an unknown name.
    """
    return open_model(name, device=device).model


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


def _resized(image: Image.Image, spec: InputSpec) -> Image.Image:
    """Resize as torchvision's ``ImageClassification``: shorter side, then centre crop."""
    height, width = spec.size
    resample = (
        Image.Resampling.BICUBIC if spec.interpolation == "bicubic" else Image.Resampling.BILINEAR
    )
    if spec.resize is None:
        return image if image.size == (width, height) else image.resize((width, height), resample)
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_short, new_long = spec.resize, int(spec.resize * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    if size != image.size:
        image = image.resize(size, resample)
    left = round((size[0] - width) / 2.0)
    top = round((size[1] - height) / 2.0)
    return image.crop((left, top, left + width, top + height))


def network_view(image: Image.Image, spec: InputSpec = DEMO_INPUT) -> Image.Image:
    """The image as the network sees it, before scaling: in the model's mode, resized
    and centre-cropped as :func:`to_batch` does. A map lies over this, not over the
    uncropped image."""
    return _resized(to_mode(image, spec.mode), spec)


def to_batch(images: list[Image.Image] | Image.Image, spec: InputSpec = DEMO_INPUT) -> torch.Tensor:
    """Turn Pillow images into an N×C×H×W float batch for a model.

    Each image is converted to the model's mode, resized (with ``spec.resize``,
    its shorter side to that and the centre cropped to ``spec.size``, as
    torchvision's transforms do; else straight to ``spec.size``) and scaled to
    [0, 1], then normalised when the spec has a mean and std.
    """
    if isinstance(images, Image.Image):
        images = [images]
    arrays = []
    for image in images:
        image = network_view(image, spec)
        array = np.asarray(image, dtype=np.float32) / 255.0
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    batch = torch.from_numpy(np.stack(arrays))
    if spec.mean is not None and spec.std is not None:
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(spec.std).view(1, -1, 1, 1)
        batch = (batch - mean) / std
    return batch
