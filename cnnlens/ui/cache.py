"""Every st.cache_resource and st.cache_data of the app, in one place.

Resources (models, lenses) are shared by all browser sessions: the lens keeps
no per-call state and models run in eval mode under inference mode, so sharing
them between threads is safe. Data caches return copies.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from cnnlens.data import Dataset
    from cnnlens.lens import Lens

DISPLAY_SIDE = 512
"""Input images are shown at most this large; the maps are laid over them."""


@dataclass(frozen=True)
class Features:
    """What one forward pass shows about one image."""

    maps: dict[str, np.ndarray]  # target -> C×H×W float32
    probabilities: np.ndarray | None  # one per class, or None without a classifier


@st.cache_data(max_entries=8, show_spinner="Reading the dataset folder…")
def get_dataset(root: str) -> Dataset:
    """The indexed dataset folder (bad rows are in ``.problems``)."""
    from cnnlens.data import load_dataset

    return load_dataset(root)


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def get_model(name: str) -> nn.Module:
    """A registered model in eval mode on the best device here, shared by every session."""
    from cnnlens.models import load_model, pick_device

    return load_model(name, pick_device())


@st.cache_resource(max_entries=8, show_spinner=False)
def get_lens(model_name: str, targets: tuple[str, ...]) -> Lens:
    """One lens per model and target set, shared by every session (thread-safe)."""
    from cnnlens.lens import build_lens

    return build_lens(get_model(model_name), targets)


@st.cache_data(max_entries=8, show_spinner="Loading the model…")
def get_layer_names(model_name: str) -> list[str]:
    """The renamed layers of a registered model."""
    from cnnlens.lens import layer_names

    return layer_names(get_model(model_name))


@st.cache_data(max_entries=8, show_spinner=False)
def get_layer_table(model_name: str, input_shape: tuple[int, int, int]) -> pd.DataFrame:
    """The renamed layers with shapes, parameters and receptive fields."""
    from cnnlens.lens import layer_table

    return layer_table(get_model(model_name), input_shape)


@st.cache_data(max_entries=512, show_spinner=False)
def get_dataset_image(root: str, split: str, filename: str, mode: str) -> np.ndarray:
    """A dataset image as a uint8 array in the model's mode (H×W or H×W×3)."""
    image = get_dataset(root).load_image(filename, mode, split)
    image.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    return np.asarray(image)


@st.cache_data(max_entries=32, show_spinner=False)
def get_uploaded_image(data: bytes, name: str, mode: str) -> np.ndarray:
    """An uploaded image, decoded safely and converted to the model's mode."""
    from cnnlens.data import open_image, to_mode

    image = to_mode(open_image(data, name=name), mode)
    image.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    return np.asarray(image)


# A VGG-sized image keeps about 50 MB of maps: keep the recent few, not every one.
@st.cache_data(max_entries=16, show_spinner=False)
def get_features(model_name: str, targets: tuple[str, ...], pixels: np.ndarray) -> Features:
    """The target maps and class probabilities for one image (uint8 pixels)."""
    import torch
    from PIL import Image

    from cnnlens.models import to_batch
    from cnnlens.registry import model_info

    info = model_info(model_name)
    batch = to_batch(Image.fromarray(pixels), info.spec)
    lens = get_lens(model_name, targets)
    maps = lens(batch)
    probabilities = None
    if info.classes is not None:
        with torch.inference_mode():
            logits = get_model(model_name)(batch.to(lens.device))
        probabilities = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
    return Features({k: v[0].float().cpu().numpy() for k, v in maps.items()}, probabilities)


_warm_lock = threading.Lock()
_warm_started = False


def warm_up_in_background() -> None:
    """Import torch in a background thread once per server process.

    The first page paints without torch; by the time a user asks for feature
    maps, the 2-3 s import is done. Python's import lock makes a page that needs
    torch sooner wait for this import instead of starting a second one.
    """
    global _warm_started
    with _warm_lock:
        if _warm_started:
            return
        _warm_started = True
    threading.Thread(target=__import__, args=("torch",), daemon=True).start()
