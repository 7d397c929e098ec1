"""Weights for the model zoo: reading state_dict files safely, fitting them to an
architecture, and torchvision's pretrained weights in the local torch hub cache.

:func:`load_weights` reads a file without running code in it. Pretrained weights
are read from the torch hub cache. The only connections out are a download someone
asks for (:func:`download_weights`, ``open_model(..., allow_download=True)``) and,
with ``CNNLENS_CHECK_ONLINE=1``, one check whether the weights server answers;
``CNNLENS_OFFLINE=1`` forbids both.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import torch
from torch import nn

from cnnlens.registry import DEMO_WEIGHTS, RANDOM_WEIGHTS_NOTE, default_weights, model_info

__all__ = ["FittedWeights", "download_weights", "fit_weights", "load_weights", "weights_status"]

OFFLINE_ENV = "CNNLENS_OFFLINE"  # "1": never connect out, not even when asked to download
CHECK_ONLINE_ENV = "CNNLENS_CHECK_ONLINE"  # "1": ask the weights server before offering
_ONLINE_HOST = ("download.pytorch.org", 443)
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
# torchvision's DenseNet files use old names ("norm.1"); its builder renames them so.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel, torch.compile
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_download_lock = threading.Lock()


class Build(Protocol):
    """Builds a registered network with seeded random values (``cnnlens.models._build``).

    Passed in rather than imported: the architectures live in :mod:`cnnlens.models`,
    which imports this module.
    """

    def __call__(
        self, name: str, num_classes: int | None = None, *, skeleton: bool = False
    ) -> nn.Module: ...


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


def _misfit_notes(
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    usable: dict[str, torch.Tensor],
    source: str,
    title: str,
) -> list[str]:
    """In words: the network's tensors the file lacks, and the file's tensors left out."""
    notes = []
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
    return notes


def _fit(name: str, state: dict[str, torch.Tensor], source: str, build: Build) -> _Fitted:
    """Build the network for a state_dict and load what fits, saying in words what did not.

    Raises:
        ValueError: if no tensor of the file fits the network.
    """
    title = f"{name} ({model_info(name).title})"
    state = {k: v for k, v in state.items() if not k.startswith(_AUX_PREFIXES)}
    if name.startswith("densenet"):
        state = {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    model = build(name, skeleton=True)
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
            model = build(name, num_classes, skeleton=True)
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
    notes.extend(_misfit_notes(state, expected, usable, source, title))
    model.load_state_dict(usable, strict=False, assign=True)
    unset = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if all(n.endswith("num_batches_tracked") for n in unset):
        zeros = {n: torch.zeros((), dtype=torch.long) for n in unset}
        model.load_state_dict(zeros, strict=False, assign=True)
    else:  # tensors the file lacks keep seeded random values
        model = build(name, num_classes)
        if channels is not None:
            _set_in_channels(model, first, channels)
        model.load_state_dict(usable, strict=False)
    return _Fitted(model, num_classes, channels, tuple(notes))


def _cached_file(name: str) -> Path:
    """Where torch's hub cache keeps a model's default pretrained weights."""
    url = default_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _setting(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _online() -> bool:
    """Whether the weights server answers; asked at most once per process."""
    try:
        socket.create_connection(_ONLINE_HOST, timeout=1.5).close()
    except OSError:
        return False
    return True


def weights_status(name: str) -> str:
    """Whether a model's pretrained weights can be used here, without connecting by default.

    Only with ``CNNLENS_CHECK_ONLINE=1`` does this ask the weights server whether it
    answers (once per process); ``CNNLENS_OFFLINE=1`` forbids that and any download.

    Returns:
        ``"cached"`` (the demo's, or in the local torch hub cache); ``"downloadable"``
        (not cached, downloads are allowed and, when checked, the server answers);
        or ``"unavailable"`` (not cached, and offline or the check found no server).

    Raises:
        ValueError: for an unknown model name.
    """
    if model_info(name).weights is None or _cached_file(name).is_file():
        return "cached"
    if _setting(OFFLINE_ENV) or (_setting(CHECK_ONLINE_ENV) and not _online()):
        return "unavailable"
    return "downloadable"


def _weights_url(name: str) -> str:
    return default_weights(name).url


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
        ValueError: for a model without pretrained weights, under ``CNNLENS_OFFLINE=1``
            (without connecting), or for a download that fails or does not match its hash.
    """
    if model_info(name).weights is None:
        raise ValueError(f"{name} has no pretrained weights to download.")
    target = _cached_file(name)
    with _download_lock:
        if target.is_file():
            return target
        if _setting(OFFLINE_ENV):
            raise ValueError(
                f"The weights of {name} were not downloaded: {OFFLINE_ENV}=1 forbids connecting "
                f"out. Unset {OFFLINE_ENV} on the server to allow downloads, or copy the file "
                f"to {target}."
            )
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
        except urllib.error.HTTPError as error:
            partial.unlink(missing_ok=True)
            raise ValueError(
                f"The weights of {name} could not be downloaded: the weights server answered "
                f"{error.code} {error.reason}."
            ) from error
        except OSError as error:
            partial.unlink(missing_ok=True)
            reason = getattr(error, "reason", error)
            raise ValueError(
                f"The weights of {name} could not be downloaded: the weights server could not "
                f"be reached ({reason}). Check the server's connection, or copy the file to "
                f"{target}."
            ) from error
        expected = re.search(r"-([a-f0-9]+)\.", target.name)  # torch.hub's naming rule
        if expected and not digest.hexdigest().startswith(expected[1]):
            partial.unlink()
            raise ValueError(
                f"The download of {target.name} is corrupt (its sha256 does not match); try again."
            )
        os.replace(partial, target)
    return target


def _pretrained(
    name: str, allow_download: bool, progress: Callable[[int, int], None] | None, build: Build
) -> tuple[_Fitted, str, str] | str:
    """The pretrained network, its words and id; or, when not possible, why (a note)."""
    weights = default_weights(name)
    path = _cached_file(name)
    if not path.is_file():
        if not allow_download:
            return f"The pretrained weights of {name} are not in the local torch hub cache."
        try:
            download_weights(name, progress)
        except ValueError as error:
            return str(error)
    try:
        fitted = _fit(name, load_weights(path), path.name, build)
    except ValueError as error:
        return f"The cached pretrained weights of {name} cannot be used: {error}"
    return fitted, f"pretrained {weights.name}", weights.name


def _with_weights(
    name: str,
    weights: str | Path | None,
    allow_download: bool,
    progress: Callable[[int, int], None] | None,
    build: Build,
) -> tuple[_Fitted, str, str, list[str]]:
    """The network with its weights, their words and id, and notes on where they came from."""
    notes: list[str] = []
    if weights is None:
        if model_info(name).weights is None:
            fitted = _fit(name, load_weights(DEMO_WEIGHTS), DEMO_WEIGHTS.name, build)
            return fitted, "trained demo weights", _file_id(DEMO_WEIGHTS), notes
        found = _pretrained(name, allow_download, progress, build)
        if not isinstance(found, str):
            return (*found, notes)
        notes.append(found)
        weights = "random"
    if weights == "random":
        notes.append(RANDOM_WEIGHTS_NOTE)
        return _Fitted(build(name), None, None, ()), "random weights", "random-seed0", notes
    if not isinstance(weights, (str, Path)):
        raise TypeError(
            f"weights must be None, 'random' or the path of a state_dict file, "
            f"got {type(weights).__name__}."
        )
    path = Path(weights)
    return (
        _fit(name, load_weights(path), path.name, build),
        f"your file {path.name}",
        _file_id(path),
        notes,
    )


@dataclass(frozen=True, eq=False)
class FittedWeights:
    """A registered network with its weights, and where they came from: what
    :func:`fit_weights` returns.

    Attributes:
        model: the network as its builder made it, its weights loaded, on the CPU.
        description: the weights in words, e.g. ``"pretrained IMAGENET1K_V1"``.
        weights_id: a stable id of the weights for disk caches: the first 16 hex
            digits of the weights file's sha256, the pretrained weights' name, or
            ``"random-seed0"``.
        notes: banners for people: random weights, tensors that did not fit.
        num_classes: the classifier's outputs where the weights chose another count
            than the architecture's, else ``None``.
        channels: the input channels where the weights chose another count (1 or
            3), else ``None``.
        outputs: the classifier's outputs.
    """

    model: nn.Module
    description: str
    weights_id: str
    notes: tuple[str, ...]
    num_classes: int | None
    channels: int | None
    outputs: int


def fit_weights(
    name: str,
    weights: str | Path | None,
    build: Build,
    *,
    allow_download: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> FittedWeights:
    """Build a registered network and give it its weights, as :func:`cnnlens.open_model` asks.

    Args:
        name: a registry name.
        weights: ``None`` for the default (the demo's trained weights, or the
            pretrained weights from the torch hub cache, else random ones with a
            note), ``"random"``, or the path of a state_dict file.
        build: builds the network with seeded random values (``cnnlens.models``).
        allow_download: fetch missing pretrained weights.
        progress: called with (bytes done, bytes in all) while downloading.

    Returns:
        A :class:`FittedWeights`.

    Raises:
        TypeError: if ``weights`` is neither ``None``, a string nor a path.
        ValueError: for an unknown model, or a weights file that cannot be read or
            does not fit the architecture.
    """
    fitted, description, weights_id, notes = _with_weights(
        name, weights, allow_download, progress, build
    )
    state = fitted.model.state_dict()
    return FittedWeights(
        model=fitted.model,
        description=description,
        weights_id=weights_id,
        notes=(*notes, *fitted.notes),
        num_classes=fitted.num_classes,
        channels=fitted.channels,
        outputs=state[_head_key(state)].shape[0],
    )
