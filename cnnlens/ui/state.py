"""Session state keys, their defaults, and their sync with the URL.

The view (dataset, model, weights, seed, image, layers, layer, channel,
normalisation) lives in ``st.session_state`` under the keys below and is
mirrored into the URL, so a copied URL reopens the same view. Widgets use these
keys directly, with ``persist_state="session"`` so a value survives page switches.
Uploads (an image, a zip, a weights file) live on this server only: a link
cannot carry them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import streamlit as st

from cnnlens.registry import DEMO_DATASET_DIR, MODELS, SEED

if TYPE_CHECKING:
    from cnnlens.data import Dataset

DATA_KEY = "data"  # the dataset folder, an absolute path
MODEL_KEY = "model"
WEIGHTS_KEY = "weights"  # "default", "random" or the path of a state_dict file
DEVICE_KEY = "device"  # "auto", "cpu" or "cuda"
BF16_KEY = "bf16"
SEED_KEY = "seed"
SPLIT_KEY = "split"
IMAGE_KEY = "image"
LAYERS_KEY = "layers"
LAYER_KEY = "layer"
CHANNEL_KEY = "channel"
NORM_KEY = "norm"
UPLOAD_KEY = "upload"  # (name, bytes) of an uploaded image; never in the URL
INPUT_KEY = "input"  # "draw": the drawing pad; "image": the dataset's image or an upload;
# None: the model's default (_INPUT_DEFAULT_KEY)
_INPUT_DEFAULT_KEY = "_input_default"  # "draw" for a grayscale model, else "image"
DRAWING_KEY = "drawing"  # the pad's drawing as Drawing.encode's text ("" when empty)
PAD_RESET_KEY = "_pad_reset"  # counts the times the server set the pad's drawing itself

NORMS = ("channel", "layer")
INPUTS = ("draw", "image")
DEFAULT_WEIGHTS = "default"
_URL_KEYS = (
    DATA_KEY,
    MODEL_KEY,
    WEIGHTS_KEY,
    SEED_KEY,
    SPLIT_KEY,
    IMAGE_KEY,
    LAYERS_KEY,
    LAYER_KEY,
    CHANNEL_KEY,
    NORM_KEY,
    INPUT_KEY,
    DRAWING_KEY,
)
_LOADED = "_url_at_open"


class ModelChoice(NamedTuple):
    """Which network a session looks into: the cache key of a loaded model."""

    name: str
    weights: str  # "default", "random" or a state_dict path
    device: str  # "auto", "cpu" or "cuda"
    bf16: bool


def model_choice() -> ModelChoice:
    """This session's model, weights and device."""
    state = st.session_state
    return ModelChoice(state[MODEL_KEY], state[WEIGHTS_KEY], state[DEVICE_KEY], state[BF16_KEY])


@dataclass(frozen=True)
class View:
    """The current view, read from session state after it has been validated."""

    seed: int
    split: str
    image: str
    layers: tuple[str, ...]
    upload: tuple[str, bytes] | None
    drawing: str | None = None
    """The pad's drawing (``Drawing.encode``'s text, ``""`` when empty) when the input is
    the pad, else ``None``."""


def _parse(key: str, raw: str, dataset: Dataset | None, names: list[str]) -> object:
    """Turn one query value into a state value, or raise ValueError."""
    if key == MODEL_KEY:
        if raw not in MODELS:
            raise ValueError
        return raw
    if key in (DATA_KEY, WEIGHTS_KEY):
        if key == WEIGHTS_KEY and raw in (DEFAULT_WEIGHTS, "random"):
            return raw
        from cnnlens.sources import resolve_under_roots

        path = resolve_under_roots(raw)
        if not (path.is_dir() if key == DATA_KEY else path.is_file()):
            raise ValueError
        return str(path)
    if key == SEED_KEY:
        seed = int(raw)
        if not 0 <= seed < 2**32:
            raise ValueError
        return seed
    if key == SPLIT_KEY:
        has_test = dataset is not None and dataset.test_index is not None
        if raw not in ("train", "test") or (raw == "test" and not has_test):
            raise ValueError
        return raw
    if key == IMAGE_KEY:
        return raw  # checked against the split below, once the split is known
    if key == LAYERS_KEY:
        layers = [name for name in raw.split(",") if name]
        if not layers or any(name not in names for name in layers):
            raise ValueError
        return layers
    if key == LAYER_KEY:
        if raw not in names:
            raise ValueError
        return raw
    if key == CHANNEL_KEY:
        channel = int(raw)
        if channel < 0:
            raise ValueError
        return channel
    if key == INPUT_KEY:
        if raw not in INPUTS:
            raise ValueError
        return raw
    if key == DRAWING_KEY:
        from cnnlens.drawing import Drawing

        return Drawing.decode(raw).encode() if raw else ""
    if raw not in NORMS:
        raise ValueError
    return raw


def _url_value(key: str) -> str | None:
    """A query value given when the session opened (the URL it was opened with)."""
    return st.session_state[_LOADED].get(key)


def _settle_from_url(
    done_key: str, keys: tuple[str, ...], dataset: Dataset | None, names: list[str]
) -> list[str]:
    """Once per session, move the URL's values for ``keys`` into session state."""
    state = st.session_state
    if _LOADED not in state:
        state[_LOADED] = {key: st.query_params.get(key) for key in _URL_KEYS}
    if state.get(done_key):
        return []
    state[done_key] = True
    notices: list[str] = []
    for key in keys:
        raw = _url_value(key)
        if raw is None:
            continue
        try:
            state[key] = _parse(key, raw, dataset, names)
        except ValueError:
            notices.append(f"The link's {key}={raw!r} is not valid here; using the default.")
    return notices


def default_dataset() -> str:
    """The dataset a session starts with: ``CNNLENS_DATASET``, else the embedded demo."""
    return os.environ.get("CNNLENS_DATASET") or str(DEMO_DATASET_DIR)


def init_model() -> list[str]:
    """Settle dataset, model and weights (from the URL once per session); needs no torch.

    Returns:
        Notices for URL values that were invalid and fell back to defaults.
    """
    notices = _settle_from_url("_url_model_loaded", (DATA_KEY, MODEL_KEY, WEIGHTS_KEY), None, [])
    state = st.session_state
    state.setdefault(DATA_KEY, default_dataset())
    state.setdefault(MODEL_KEY, "demo")
    state.setdefault(WEIGHTS_KEY, DEFAULT_WEIGHTS)
    state.setdefault(DEVICE_KEY, "auto")
    state.setdefault(BF16_KEY, False)
    return notices


def init_state(dataset: Dataset, mode: str = "RGB") -> list[str]:
    """Settle the image view: defaults and, once per session, the URL's values.

    The input starts on the drawing pad for a grayscale model (``mode`` ``"L"``), unless
    the link names a dataset image (its ``image`` or ``seed``). Layers are settled
    separately by :func:`init_layers`, which needs the model (and so torch); pages that
    show no layers paint without it.

    Returns:
        Notices for URL values that were invalid and fell back to defaults.
    """
    state = st.session_state
    keys = (SEED_KEY, SPLIT_KEY, IMAGE_KEY, NORM_KEY, INPUT_KEY, DRAWING_KEY)
    notices = _settle_from_url("_url_image_loaded", keys, dataset, [])
    if INPUT_KEY not in state:  # a link that names a dataset image opens on it
        names_image = _url_value(IMAGE_KEY) is not None or _url_value(SEED_KEY) is not None
        state[INPUT_KEY] = "image" if names_image else None
    state[_INPUT_DEFAULT_KEY] = "draw" if mode == "L" else "image"
    if DRAWING_KEY not in state:
        from cnnlens.drawing import SAMPLE

        state[DRAWING_KEY] = SAMPLE.encode()
    image = state.get(IMAGE_KEY)
    if image is not None and not state.get("_url_image_checked"):
        state["_url_image_checked"] = True
        try:
            dataset.path_of(str(image), str(state.get(SPLIT_KEY, "train")))
        except ValueError:
            notices.append(f"The link's image {image!r} is not in this dataset; using the pick.")
            state[IMAGE_KEY] = None
    state.setdefault(SEED_KEY, SEED)
    state.setdefault(SPLIT_KEY, "train")
    state.setdefault(IMAGE_KEY, None)
    state.setdefault(NORM_KEY, "channel")
    state.setdefault(UPLOAD_KEY, None)
    return notices


def init_layers(names: list[str], defaults: list[str]) -> list[str]:
    """Settle the target layers, the shown layer and the channel for a model's layers.

    Returns:
        Notices for URL values that were invalid and fell back to defaults.
    """
    state = st.session_state
    notices = _settle_from_url(
        "_url_layers_loaded", (LAYERS_KEY, LAYER_KEY, CHANNEL_KEY), None, names
    )
    if not state.get(LAYERS_KEY) or any(n not in names for n in state[LAYERS_KEY]):
        state[LAYERS_KEY] = list(defaults)
    chosen = set(state[LAYERS_KEY])
    in_order = [name for name in names if name in chosen]  # the network's, not the clicks'
    if in_order != state[LAYERS_KEY]:
        state[LAYERS_KEY] = in_order
    if state.get(LAYER_KEY) not in state[LAYERS_KEY]:
        state[LAYER_KEY] = state[LAYERS_KEY][0]
    state.setdefault(CHANNEL_KEY, 0)
    return notices


def current_view(dataset: Dataset) -> View:
    """The validated view of this session."""
    state = st.session_state
    split = state[SPLIT_KEY]
    image = state[IMAGE_KEY] or dataset.pick(state[SEED_KEY], split)
    return View(
        seed=state[SEED_KEY],
        split=split,
        image=image,
        layers=tuple(state.get(LAYERS_KEY, ())),
        upload=state[UPLOAD_KEY],
        drawing=state[DRAWING_KEY] if input_source() == "draw" else None,
    )


def input_source() -> str:
    """This session's input: ``"draw"`` (the pad) or ``"image"``; by default the pad for
    a grayscale model, until the person chooses."""
    state = st.session_state
    return state.get(INPUT_KEY) or state.get(_INPUT_DEFAULT_KEY) or "image"


def _linkable(path: str) -> str | None:
    """A dataset or weights path as a link shows it: relative to its data root.

    ``None`` for a path outside the roots (an upload), which a link cannot carry.
    """
    from cnnlens.sources import data_roots

    for root in data_roots():
        if Path(path).is_relative_to(root):
            return str(Path(path).relative_to(root)) if root == data_roots()[0] else path
    return None


def sync_url() -> None:
    """Mirror the view into the URL (values equal to their defaults are left out)."""
    state = st.session_state
    layers = state.get(LAYERS_KEY)
    data, weights = state[DATA_KEY], state[WEIGHTS_KEY]
    drawn = input_source() == "draw"
    wanted = {
        DATA_KEY: _linkable(data) if data != default_dataset() else None,
        MODEL_KEY: state[MODEL_KEY] if state[MODEL_KEY] != "demo" else None,
        WEIGHTS_KEY: weights
        if weights == "random"
        else (_linkable(weights) if weights != DEFAULT_WEIGHTS else None),
        # A drawing's link names no dataset image: one that did would open on it.
        SEED_KEY: None if drawn else str(state[SEED_KEY]),
        SPLIT_KEY: state[SPLIT_KEY] if state[SPLIT_KEY] != "train" and not drawn else None,
        IMAGE_KEY: None if drawn else state[IMAGE_KEY],
        LAYERS_KEY: ",".join(layers) if layers else None,
        LAYER_KEY: state.get(LAYER_KEY),
        CHANNEL_KEY: str(state[CHANNEL_KEY]) if CHANNEL_KEY in state else None,
        NORM_KEY: state[NORM_KEY] if state[NORM_KEY] != "channel" else None,
        INPUT_KEY: state.get(INPUT_KEY),
        DRAWING_KEY: state.get(DRAWING_KEY) if drawn else None,
    }
    wanted = {key: value for key, value in wanted.items() if value is not None}
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)


def shared_widget(shared: str, own: str, value: object) -> dict[str, object]:
    """Arguments for a widget that shows a value shared with another page's widget.

    Two pages' widgets with the same key lose the value when people switch between
    the pages (it comes up empty or at its default), so each page's widget has a key
    of its own, set from the shared value on every run and written back on change.

    Args:
        shared: the session-state key of the shared value (e.g. ``LAYER_KEY``).
        own: this page's widget key.
        value: the shared value, already checked against the widget's options.

    Returns:
        ``key`` and ``on_change`` for the widget call.
    """
    st.session_state[shared] = st.session_state[own] = value
    return {
        "key": own,
        "on_change": lambda: st.session_state.update({shared: st.session_state[own]}),
    }


def choose_image(filename: str | None, split: str | None = None) -> None:
    """Callback: show a dataset image (``None``: the random pick) instead of an upload."""
    st.session_state[IMAGE_KEY] = filename
    if split is not None:
        st.session_state[SPLIT_KEY] = split
    st.session_state[UPLOAD_KEY] = None
    st.session_state[INPUT_KEY] = "image"


def set_drawing(text: str, from_pad: bool = True) -> None:
    """Show a drawing (``Drawing.encode``'s text) on the pad, as this session's input.

    Args:
        text: the drawing.
        from_pad: the pad sent it (it already shows it); else the pad is told to
            show this one instead of its own.
    """
    state = st.session_state
    state[DRAWING_KEY] = text
    state[INPUT_KEY] = "draw"
    state[UPLOAD_KEY] = None
    if not from_pad:
        state[PAD_RESET_KEY] = state.get(PAD_RESET_KEY, 0) + 1


def choose_dataset(root: str) -> None:
    """Switch this session to another dataset folder: the image view starts afresh."""
    state = st.session_state
    state[DATA_KEY] = root
    state[IMAGE_KEY] = None
    state[SPLIT_KEY] = "train"
    state[UPLOAD_KEY] = None
    state[INPUT_KEY] = None  # the model's default


def next_seed() -> None:
    """Callback: another random image, reproducibly (the next seed)."""
    st.session_state[SEED_KEY] = (st.session_state[SEED_KEY] + 1) % 2**32
    choose_image(None)
