"""Every cache of the app, in one place.

Resources (models) are shared by all browser sessions: a model's lenses and
extractors run on its one private copy and keep no per-call state, so sharing
them between threads is safe. Data caches return copies, except the feature
maps: they are the largest values, so they are kept once, read-only, in a cache
bounded by bytes (``CNNLENS_FEATURE_CACHE_MB``, 512 by default).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import streamlit as st

from cnnlens.bytes_cache import BytesCache
from cnnlens.ui.state import DEFAULT_WEIGHTS, ModelChoice

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from cnnlens.data import Dataset
    from cnnlens.models import LoadedModel

T = TypeVar("T")

DISPLAY_SIDE = 512
"""Input images are shown at most this large; the maps are laid over them."""


@dataclass(frozen=True)
class Features:
    """What one forward pass shows about one image."""

    maps: dict[str, np.ndarray]  # target -> C×H×W float32
    probabilities: np.ndarray | None  # one per class, or None without a classifier
    seen: np.ndarray  # the image as the network sees it (resized, cropped), uint8

    @property
    def nbytes(self) -> int:
        """The memory its arrays take."""
        arrays = [*self.maps.values(), self.seen]
        if self.probabilities is not None:
            arrays.append(self.probabilities)
        return sum(array.nbytes for array in arrays)


def feature_cache_mb() -> float:
    """The feature-map cache's limit: ``CNNLENS_FEATURE_CACHE_MB`` megabytes, 512 by default.

    Raises:
        ValueError: if the setting is not a number of 0 or more.
    """
    raw = os.environ.get("CNNLENS_FEATURE_CACHE_MB", "512")
    try:
        megabytes = float(raw)
    except ValueError:
        megabytes = -1.0
    if megabytes < 0:
        raise ValueError(f"CNNLENS_FEATURE_CACHE_MB must be a number of megabytes, got {raw!r}.")
    return megabytes


def _key_part(value: object) -> Hashable:
    """A hashable stand-in for an argument: arrays and bytes by digest, a dataset by
    its folder and fingerprint (so an image changed on disk is read again)."""
    if isinstance(value, bytes):
        return hashlib.blake2b(value, digest_size=16).digest()
    if hasattr(value, "tobytes") and hasattr(value, "dtype"):  # a numpy array
        return (value.shape, str(value.dtype), _key_part(value.tobytes()))
    if hasattr(value, "fingerprint") and hasattr(value, "root"):  # a Dataset
        return (str(value.root), value.fingerprint)
    return value  # type: ignore[return-value]


def _read_only(value: T) -> T:
    """Freeze the arrays of a shared result, so no session can change another's."""
    arrays = [value] if hasattr(value, "setflags") else list(vars(value).values())
    for array in arrays:
        if isinstance(array, dict):
            arrays.extend(array.values())
        elif hasattr(array, "setflags"):
            array.setflags(write=False)
    return value


def _in_memory(megabytes: float) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Keep a function's results in memory for every session, at most ``megabytes`` of them.

    Unlike ``st.cache_data``, which counts entries, this counts bytes (a result's
    ``nbytes``), and it hands out the one kept result, read-only, instead of a copy.
    """

    def wrap(function: Callable[..., T]) -> Callable[..., T]:
        kept = BytesCache[T](int(megabytes * 1024 * 1024), lambda value: value.nbytes)

        @functools.wraps(function)
        def cached(*args: object) -> T:
            key = tuple(_key_part(arg) for arg in args)
            return kept.get_or_compute(key, lambda: _read_only(function(*args)))

        _kept_in_memory.append(kept)
        return cached

    return wrap


_kept_in_memory: list[BytesCache] = []


def clear_all() -> None:
    """Forget every cached model and result, for every session (new weights came in)."""
    st.cache_resource.clear()
    st.cache_data.clear()
    for kept in _kept_in_memory:
        kept.clear()


@st.cache_resource(max_entries=8, show_spinner="Reading the dataset folder…")
def get_dataset(root: str) -> Dataset:
    """The indexed dataset folder (bad rows are in ``.problems``), one for every session.

    Shared, not copied per call: a copy would build its filename lookups again on
    its first image, tens of milliseconds at 48,000 rows. A ``Dataset`` is frozen;
    its lookups are built once and only read after that.
    """
    from cnnlens.data import load_dataset

    return load_dataset(root)


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def get_model(choice: ModelChoice) -> LoadedModel:
    """A model with its weights in eval mode, shared by every session.

    Raises:
        ValueError: for weights that cannot be read or do not fit the model.
    """
    import torch

    from cnnlens.models import open_model, pick_device

    device = pick_device(choice.device)
    dtype = torch.bfloat16 if choice.bf16 and device.type == "cuda" else None
    weights = None if choice.weights == DEFAULT_WEIGHTS else choice.weights
    return open_model(choice.name, weights=weights, device=device, dtype=dtype)


@st.cache_data(max_entries=8, show_spinner="Loading the model…")
def get_layer_names(choice: ModelChoice) -> list[str]:
    """The layers of a model: renamed layers, or qualified module names."""
    return get_model(choice).layer_names()


@st.cache_data(max_entries=8, show_spinner=False)
def get_default_layers(choice: ModelChoice) -> list[str]:
    """The layers a model shows first."""
    return get_model(choice).default_layers()


@st.cache_data(max_entries=8, show_spinner=False)
def get_layer_table(choice: ModelChoice) -> pd.DataFrame:
    """The layers with their output shapes, parameters and map memory for the model's input."""
    loaded = get_model(choice)
    return loaded.layers.table(loaded.spec.shape)


# Taking the dataset itself (not its folder) spares get_dataset's copy of the whole
# index on every new image, 15 ms of a click's 70.
@_in_memory(64)
def get_dataset_image(dataset: Dataset, split: str, filename: str, mode: str) -> np.ndarray:
    """A dataset image as a uint8 array in the model's mode (H×W or H×W×3), at most
    ``DISPLAY_SIDE`` a side (a large JPEG is decoded straight at a reduced scale)."""
    import numpy as np

    return np.asarray(dataset.load_image(filename, mode, split, max_side=DISPLAY_SIDE))


@_in_memory(32)
def get_uploaded_image(data: bytes, name: str, mode: str) -> np.ndarray:
    """An uploaded image, decoded safely and converted to the model's mode."""
    import numpy as np

    from cnnlens.images import open_image, to_mode

    return np.asarray(to_mode(open_image(data, name=name, max_side=DISPLAY_SIDE), mode))


# Below this many input values a forward is a few ms: one thread does it fastest,
# and OpenMP's second thread, contending with the browser for two cores, can turn
# 3 ms into 100 ms.
_ONE_THREAD_PIXELS = 64 * 64


@_in_memory(feature_cache_mb())
def get_features(choice: ModelChoice, targets: tuple[str, ...], pixels: np.ndarray) -> Features:
    """The target maps, class probabilities and the network's view of one image (uint8 pixels).

    Probabilities are left out for random weights, whose guesses mean nothing. The
    result is shared by every session that shows the same image: its arrays are
    read-only.

    Raises:
        ValueError: if the image does not fit the model, or a target is not a layer.
    """
    import numpy as np
    import torch
    from PIL import Image

    from cnnlens.preprocess import network_view

    loaded = get_model(choice)
    image = Image.fromarray(pixels)
    batch = loaded.batch(image)
    threads = torch.get_num_threads()  # per thread: other sessions keep theirs
    if batch[0].numel() <= _ONE_THREAD_PIXELS * batch.shape[1]:
        torch.set_num_threads(1)
    try:
        maps = loaded.extractor(targets)(batch)
        probabilities = None
        if not loaded.weights.startswith("random"):
            found = loaded.probabilities(batch)
            probabilities = None if found is None else found[0]
    finally:
        torch.set_num_threads(threads)
    return Features(
        {k: v[0].float().cpu().numpy() for k, v in maps.items()},
        probabilities,
        np.asarray(network_view(image, loaded.spec)),
    )


_warm_lock = threading.Lock()
_warm_started = False


def warm_up_in_background() -> None:
    """Import torch and clear day-old uploads in a background thread, once per process.

    The first page paints without torch; by the time a user asks for feature
    maps, the 2-3 s import is done. Python's import lock makes a page that needs
    torch sooner wait for this import instead of starting a second one. Then it
    builds Streamlit's plotly template, if the launcher
    (``cnnlens.ui.streamlit_internals.import_streamlit_lean``) put it off.
    """
    global _warm_started
    with _warm_lock:
        if _warm_started:
            return
        _warm_started = True

    def warm_up() -> None:
        from cnnlens.sources import remove_stale_uploads
        from cnnlens.ui.streamlit_internals import restore_plotly_theme

        remove_stale_uploads()
        import torch  # noqa: F401

        restore_plotly_theme()

    threading.Thread(target=warm_up, daemon=True).start()


# --- Insights ---
# Dataset-wide results live in the on-disk store (cnnlens.store), which also keeps
# the recent ones decoded in memory. The functions that may run a dataset pass are
# not st.cache_* functions: a cached function cannot report progress to the page
# waiting for it, and the store already makes the second call fast.

if TYPE_CHECKING:
    from cnnlens.insights import LayerStats, Predictions
    from cnnlens.registry import InputSpec
    from cnnlens.store import ResultStore

INSIGHTS_BATCH = 256
"""Images per forward pass of a dataset pass: large batches keep small CNNs busy."""


@st.cache_resource(max_entries=2, show_spinner=False)
def get_result_store(folder: str) -> ResultStore:
    """The on-disk store of dataset-wide results in ``folder``, shared by every session."""
    from pathlib import Path

    from cnnlens.store import ResultStore

    return ResultStore(Path(folder))


def result_store() -> ResultStore:
    """The store under ``CNNLENS_CACHE_DIR`` (read on each call, so tests can move it)."""
    from cnnlens.sources import cache_dir

    return get_result_store(str(cache_dir() / "insights"))


def _decode_workers(spec: InputSpec) -> int:
    """Worker processes that decode images during a dataset pass.

    Digit-sized images decode in microseconds: starting a worker and sending
    its batches across costs more than it saves. Photographs take milliseconds
    each, so one worker decodes while the network runs.
    """
    import os

    if spec.size[0] * spec.size[1] < 96 * 96:
        return 0
    return min(2, max(1, (os.cpu_count() or 1) - 1))


def _pass_options(
    loaded: LoadedModel, on_progress: Callable[[int, int], None] | None
) -> dict[str, object]:
    """How the app runs a dataset pass: its store, batch size, decoding workers, progress."""
    return {
        "store": result_store(),
        "batch_size": INSIGHTS_BATCH,
        "workers": _decode_workers(loaded.spec),
        "on_progress": on_progress,
    }


def find_layer_stats(choice: ModelChoice, root: str, split: str, layer: str) -> LayerStats | None:
    """A layer's statistics over a split if computed before (memory or disk), else ``None``."""
    from cnnlens.insights import LayerStats
    from cnnlens.store import layer_stats_key

    key = layer_stats_key(get_model(choice), get_dataset(root), layer, split)
    return result_store().peek(key, LayerStats.from_arrays)


def layer_stats(
    choice: ModelChoice,
    root: str,
    split: str,
    layer: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> LayerStats:
    """A layer's statistics over a split: from the store, or one pass over the dataset now.

    Raises:
        ValueError: for a layer without feature maps or a split without images.
    """
    from cnnlens.store import cached_layer_stats

    loaded = get_model(choice)
    return cached_layer_stats(
        loaded,
        get_dataset(root),
        layer,
        split=split,
        **_pass_options(loaded, on_progress),
    )


def layer_stats_and_predictions(
    choice: ModelChoice,
    root: str,
    split: str,
    layer: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[LayerStats, Predictions]:
    """A layer's statistics and the model's answers: from the store, or in one pass now.

    Raises:
        ValueError: for a layer without feature maps, or a model without classes.
    """
    from cnnlens.store import cached_layer_stats_and_predictions

    loaded = get_model(choice)
    return cached_layer_stats_and_predictions(
        loaded,
        get_dataset(root),
        layer,
        split=split,
        **_pass_options(loaded, on_progress),
    )


def find_predictions(choice: ModelChoice, root: str, split: str) -> Predictions | None:
    """The model's predictions over a split if computed before, else ``None``."""
    from cnnlens.insights import Predictions
    from cnnlens.store import predictions_key

    key = predictions_key(get_model(choice), get_dataset(root), split)
    return result_store().peek(key, Predictions.from_arrays)


def predictions(
    choice: ModelChoice,
    root: str,
    split: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> Predictions:
    """The model's predicted class for every image of a split: from the store, or computed now.

    Raises:
        ValueError: for a model without classes.
    """
    from cnnlens.store import cached_predictions

    loaded = get_model(choice)
    return cached_predictions(
        loaded,
        get_dataset(root),
        split=split,
        **_pass_options(loaded, on_progress),
    )


_embeddings = BytesCache["np.ndarray"](16 * 1024 * 1024, lambda points: points.nbytes)
_kept_in_memory.append(_embeddings)


def _embedding_key(
    choice: ModelChoice, root: str, split: str, layer: str, method: str, seed: int
) -> tuple:
    # The fingerprint: a dataset changed on disk gets a new map.
    return (choice, root, get_dataset(root).fingerprint, split, layer, method, seed)


def find_embedding(
    choice: ModelChoice, root: str, split: str, layer: str, method: str, seed: int
) -> np.ndarray | None:
    """A map made before by :func:`get_embedding` (read-only), or ``None``."""
    return _embeddings.get(_embedding_key(choice, root, split, layer, method, seed))


def get_embedding(
    choice: ModelChoice,
    root: str,
    split: str,
    layer: str,
    method: str,
    seed: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The images of a split on a 2-D map of a layer's channel means (N×2, read-only).

    Call it once the layer's statistics exist (:func:`layer_stats`). Kept in memory
    for every session; ``on_progress`` reports t-SNE's iterations.

    Raises:
        ValueError: for UMAP without ``umap-learn``.
    """
    from cnnlens.insights import embedding

    def compute() -> np.ndarray:
        stats = layer_stats(choice, root, split, layer)
        return _read_only(embedding(stats, method=method, seed=seed, on_progress=on_progress))

    return _embeddings.get_or_compute(
        _embedding_key(choice, root, split, layer, method, seed), compute
    )


@st.cache_data(max_entries=8, show_spinner=False)
def get_receptive_field(choice: ModelChoice, layer: str) -> int | None:
    """A layer's receptive field in input pixels, where it can be derived."""
    return get_model(choice).layers.receptive_field(layer)


@_in_memory(32)
def get_network_input(choice: ModelChoice, root: str, split: str, filename: str) -> np.ndarray:
    """A dataset image as the network sees it (resized, cropped), as uint8 pixels."""
    from cnnlens.preprocess import to_uint8_image

    loaded = get_model(choice)
    image = get_dataset(root).load_image(filename, loaded.spec.mode, split)
    return to_uint8_image(loaded.batch(image), loaded.spec)


@_in_memory(64)
def get_channel_maps(
    choice: ModelChoice, root: str, split: str, filenames: tuple[str, ...], layer: str, channel: int
) -> np.ndarray:
    """One channel's maps for a few dataset images (k×H×W float32), in one forward pass."""
    loaded = get_model(choice)
    dataset = get_dataset(root)
    images = [dataset.load_image(name, loaded.spec.mode, split) for name in filenames]
    maps = loaded.extractor(layer)(loaded.batch(images))[layer]
    return maps[:, channel].float().cpu().numpy()


@dataclass(frozen=True)
class Explanation:
    """Grad-CAM of one image: where the chosen layer holds the evidence for a class."""

    pixels: np.ndarray  # the image as the network sees it, uint8
    cam: np.ndarray  # H×W float32 at the input's size
    class_index: int

    @property
    def nbytes(self) -> int:
        """The memory its arrays take."""
        return self.pixels.nbytes + self.cam.nbytes


@_in_memory(64)
def get_grad_cam(
    choice: ModelChoice, pixels: np.ndarray, layer: str, class_index: int | None
) -> Explanation:
    """Grad-CAM for one image (uint8 pixels) and class; ``None``: the predicted class.

    Raises:
        ValueError: for a layer without maps or a model without class scores.
    """
    import numpy as np
    from PIL import Image

    from cnnlens.gradcam import grad_cam
    from cnnlens.preprocess import to_uint8_image

    loaded = get_model(choice)
    if loaded.classes is None:
        raise ValueError(f"{loaded.name} has no classes, so there is no decision to explain.")
    batch = loaded.batch(Image.fromarray(pixels))
    if class_index is None:
        class_index = int(np.argmax(loaded.probabilities(batch)[0]))
    cam = grad_cam(loaded, batch, layer, class_index)
    return Explanation(to_uint8_image(batch, loaded.spec), cam, class_index)


# --- Network page and value explanations ---

if TYPE_CHECKING:
    from cnnlens.explain import Explanation as ValueExplanation
    from cnnlens.explain import PaddedInput
    from cnnlens.network import Column


@dataclass(frozen=True)
class Overview:
    """The Network page's columns for one image (see :func:`cnnlens.network.overview`)."""

    columns: list[Column]

    @property
    def nbytes(self) -> int:
        """The memory its arrays take."""
        return sum(
            array.nbytes
            for column in self.columns
            for array in (column.maps, column.channels, column.probabilities)
            if array is not None
        )


@_in_memory(64)
def get_overview(choice: ModelChoice, pixels: np.ndarray) -> Overview:
    """The whole network at a glance for one image (uint8 pixels), one forward pass.

    Raises:
        ValueError: if the image does not fit the model.
    """
    from PIL import Image

    from cnnlens.network import overview

    loaded = get_model(choice)
    columns = overview(loaded, loaded.batch(Image.fromarray(pixels)))
    for column in columns:
        for array in (column.maps, column.channels, column.probabilities):
            if array is not None:
                array.setflags(write=False)
    return Overview(columns)


@st.cache_data(max_entries=8, show_spinner=False)
def get_architecture_dot(choice: ModelChoice, depth: int) -> str:
    """The model's architecture graph (DOT text) opened to ``depth`` levels."""
    from cnnlens.network import architecture_dot

    return architecture_dot(get_model(choice), depth=depth)


@st.cache_data(max_entries=16, show_spinner=False)
def get_value_explanation(
    choice: ModelChoice, pixels: np.ndarray, layer: str, channel: int, row: int, col: int
) -> ValueExplanation:
    """How one value of a layer is computed for one image (see :func:`cnnlens.explain_value`).

    Raises:
        ValueError: for a point outside the layer's maps, or an image that does not fit.
    """
    from PIL import Image

    from cnnlens.explain import explain_value

    loaded = get_model(choice)
    return explain_value(loaded, layer, loaded.batch(Image.fromarray(pixels)), channel, row, col)


# --- Channel card and atlas ---
# Feature visualizations and dataset-wide ablations live in the on-disk store; the
# find_* functions only peek (a stored tile paints without computing anything).

if TYPE_CHECKING:
    from cnnlens.ablation import ClassAblation


def visual_side(choice: ModelChoice) -> int:
    """The side of a channel's feature visualization: the model's input, at most
    :data:`cnnlens.feature_visualization.LARGEST_DEFAULT_SIDE`, as the CLI stores them."""
    from cnnlens.feature_visualization import default_side

    return default_side(get_model(choice))


@st.cache_data(max_entries=64, show_spinner=False)
def get_channel_count(choice: ModelChoice, layer: str) -> int:
    """How many channels a layer has (one probe forward, once per model and layer).

    Raises:
        ValueError: for a layer without channels.
    """
    from cnnlens.feature_visualization import layer_channels

    return len(layer_channels(get_model(choice), layer))


def missing_visualizations(
    choice: ModelChoice, layer: str, channels: tuple[int, ...], **settings: object
) -> list[int]:
    """The channels whose feature visualization is not stored yet; computes nothing.

    ``settings``: ``size``, ``steps``, ``seed`` and ``negative``.
    """
    from cnnlens.feature_visualization import missing_channels

    return missing_channels(
        get_model(choice), layer, list(channels), store=result_store(), **settings
    )


def visualizations(
    choice: ModelChoice,
    layer: str,
    channels: tuple[int, ...],
    on_progress: Callable[[int, int], None] | None = None,
    batch_size: int = 64,
    **settings: object,
) -> np.ndarray:
    """The channels' feature visualizations (N×H×W or N×H×W×3 uint8, read-only): stored
    ones at once, the others computed now in groups of ``batch_size``, each group stored.

    Raises:
        ValueError: for a layer without channels, or a channel out of range.
    """
    from cnnlens.feature_visualization import cached_visualization

    return cached_visualization(
        get_model(choice),
        layer,
        list(channels),
        store=result_store(),
        on_progress=on_progress,
        batch_size=batch_size,
        **settings,
    )


@dataclass(frozen=True)
class Ablated:
    """One image's class probabilities, as they are and with one channel set to zero."""

    before: np.ndarray  # K float32
    after: np.ndarray

    @property
    def nbytes(self) -> int:
        """The memory its arrays take."""
        return self.before.nbytes + self.after.nbytes


@_in_memory(16)
def get_ablation(choice: ModelChoice, pixels: np.ndarray, layer: str, channel: int) -> Ablated:
    """The class probabilities for one image (uint8 pixels) before and after zeroing a channel.

    Raises:
        ValueError: for a layer without that channel, or an image that does not fit.
    """
    import torch
    from PIL import Image

    from cnnlens.ablation import ablate

    loaded = get_model(choice)
    before, after = ablate(loaded, loaded.batch(Image.fromarray(pixels)), layer, channel)
    return Ablated(torch.softmax(before, dim=1)[0].numpy(), torch.softmax(after, dim=1)[0].numpy())


def _ablation_key(choice: ModelChoice, root: str, split: str, layer: str, channel: int) -> str:
    from cnnlens.ablation import ablation_key

    return ablation_key(get_model(choice), get_dataset(root), layer, channel, split)


def find_ablation_by_class(
    choice: ModelChoice, root: str, split: str, layer: str, channel: int
) -> ClassAblation | None:
    """Each class's accuracy with the channel zeroed, if computed before, else ``None``."""
    from cnnlens.ablation import ClassAblation

    key = _ablation_key(choice, root, split, layer, channel)
    return result_store().peek(key, ClassAblation.from_arrays)


def ablation_by_class(
    choice: ModelChoice,
    root: str,
    split: str,
    layer: str,
    channel: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> ClassAblation:
    """Each class's accuracy over a split before and after zeroing a channel: from the
    store, or one pass over the dataset now.

    Raises:
        ValueError: for a model without classes, or labels that name none of them.
    """
    from cnnlens.ablation import cached_ablation_by_class

    return cached_ablation_by_class(
        get_model(choice),
        get_dataset(root),
        layer,
        channel,
        split=split,
        store=result_store(),
        batch_size=INSIGHTS_BATCH,
        on_progress=on_progress,
    )


@st.cache_data(max_entries=8, show_spinner=False)
def get_first_conv(choice: ModelChoice) -> str | None:
    """The qualified path of the model's first ``Conv2d``, or ``None``."""
    from torch import nn

    model = get_model(choice).model
    return next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def get_kernel(choice: ModelChoice, layer: str, channel: int) -> np.ndarray | None:
    """A channel's kernel weights (C_in×kh×kw float32) if ``layer`` is the first
    convolution, else ``None``."""
    first = get_first_conv(choice)
    loaded = get_model(choice)
    if first is None or loaded.layers.path(layer) != first:
        return None
    weight = loaded.layers.module(layer).weight
    return weight[channel].detach().float().cpu().numpy()


@_in_memory(16)
def get_padded_input(
    choice: ModelChoice, pixels: np.ndarray, layer: str, channel: int
) -> PaddedInput:
    """One input channel of a conv layer for one image, padded as the layer pads it
    (:func:`cnnlens.explain.padded_input`), for the conv animation.

    Raises:
        ValueError: if the layer is not a convolution or does not run in the forward.
    """
    from PIL import Image

    from cnnlens.explain import padded_input

    loaded = get_model(choice)
    return padded_input(loaded, layer, loaded.batch(Image.fromarray(pixels)), channel)


@dataclass(frozen=True)
class OverviewViews:
    """The Network page's map views of one image, ready to send (see ``network_view``)."""

    views: dict[str, dict]

    @property
    def nbytes(self) -> int:
        """The memory its text takes, about."""
        return sum(len(view["png"]) + len(view["values"] or "") for view in self.views.values())


@_in_memory(64)
def get_overview_views(choice: ModelChoice, pixels: np.ndarray, per: str) -> OverviewViews:
    """Each map column's map view data for one image and scaling, built once."""
    from cnnlens.ui.network_view import column_data

    columns = get_overview(choice, pixels).columns
    return OverviewViews(
        {column.name: column_data(column, per) for column in columns if column.maps is not None}
    )
