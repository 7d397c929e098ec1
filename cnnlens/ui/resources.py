"""What every page shares: the dataset folder, the model and the results store, one of each
for every browser session.

A model's lenses and extractors run on its one private copy and keep no per-call
state, so sharing it between threads is safe. A ``Dataset`` is frozen.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import streamlit as st

from cnnlens.ui.state import DEFAULT_WEIGHTS, ModelChoice

if TYPE_CHECKING:
    import pandas as pd

    from cnnlens.data import Dataset
    from cnnlens.models import LoadedModel
    from cnnlens.registry import InputSpec
    from cnnlens.store import ResultStore

__all__ = [
    "PASS_BATCH",
    "SMALL_SIDE",
    "get_dataset",
    "get_default_layers",
    "get_layer_names",
    "get_layer_table",
    "get_model",
    "pass_options",
    "result_store",
    "warm_up_in_background",
]

PASS_BATCH = 256
"""Images per forward pass of a dataset pass: large batches keep small CNNs busy."""

SMALL_SIDE = 64
"""Work on inputs at most this many pixels wide (a digit) starts by itself: a prior, a
relevance pass, the slow attribution methods, the square's every place. Larger inputs
wait for a click."""


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


def pass_options(loaded: LoadedModel) -> dict[str, int]:
    """How the app runs a dataset pass (a dataset spec's ``batch_size`` and ``workers``)."""
    return {"batch_size": PASS_BATCH, "workers": _decode_workers(loaded.spec)}


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
